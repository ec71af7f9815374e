"""Kernels of TimeRipple: token attention (Triton on CUDA, plain torch elsewhere) and fused detection.

Public functions:

* ``token_attention(q, k, v, q_src, k_src, *, scale=None, key_bias=None)``: attention over the kept
  tokens of a token plan (docs/ARCHITECTURE.md, "Token plan and token attention"). Registered as the
  custom op ``timeripple::token_attention`` so ``torch.compile`` traces through it.
* ``token_attention_ref``: the plain-torch reference (and fallback).

Dispatch on CUDA with Triton importable (one host sync for the kept lengths and class sizes):

* fp16/bf16, ``D % 8 == 0``, and every (batch, head) with the same number of kept keys of each merge
  count (at most two counts; budget mode with ``token_keys="pairs"``, or no merged keys): one bias-free
  cuDNN call per count class, combined through the log-sum-exps (``class_attention``);
* fp16/bf16, ``D % 8 == 0``, ``D + 8 <= 256`` and kept lengths close enough over the heads that padding
  them to the longest adds at most ``token_attention_compact.PAD_LIMIT`` x the pairs (always in budget mode):
  compaction + cuDNN SDPA with the bias folded into a weight channel of ``v``
  (``token_attention_compact.token_attention_compact``);
* else head dim 64/128 (any of fp16/bf16/fp32): the varlen Triton kernel reading through index lists
  (``token_attention_triton.token_attention_triton``); other head dims fall back to compaction when they can;
* everything else runs the reference, with one warning per reason.
"""

from __future__ import annotations

import logging

import torch

from .token_attention_torch import check_token_inputs, normalize_key_bias, token_attention_ref
from .triton_env import interpreting

logger = logging.getLogger(__name__)

__all__ = ["METHODS", "token_attention", "token_attention_ref", "triton_available", "triton_unsupported_reason"]

SUPPORTED_HEAD_DIMS = (64, 128)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

try:  # Triton is an optional dependency (extra "triton")
    import triton  # noqa: F401

    _TRITON_IMPORT_ERROR = None
except ImportError as exc:  # pragma: no cover - depends on the environment
    _TRITON_IMPORT_ERROR = repr(exc)

_warned: set[str] = set()


def triton_available() -> bool:
    """True when ``triton`` imports."""
    return _TRITON_IMPORT_ERROR is None


def triton_unsupported_reason(q: torch.Tensor) -> str | None:
    """Why the Triton token-attention kernels cannot run ``q`` (None when they can)."""
    if _TRITON_IMPORT_ERROR is not None:
        return f"triton is not importable ({_TRITON_IMPORT_ERROR})"
    if q.shape[-1] not in SUPPORTED_HEAD_DIMS:
        return f"head dim {q.shape[-1]} is not one of {SUPPORTED_HEAD_DIMS}"
    if q.dtype not in SUPPORTED_DTYPES:
        return f"dtype {q.dtype} is not one of fp16/bf16/fp32"
    return None


def _warn_once(reason: str) -> None:
    if reason not in _warned:
        _warned.add(reason)
        logger.warning("timeripple token attention falls back to plain torch: %s", reason)


METHODS = ("auto", "classes", "compact", "triton", "reference")


def _token_attention_impl(q, k, v, q_src, k_src, scale, key_bias, key_repr="source", method="auto", expected=None,
                          kept=None, group=True, known=None):
    if method == "reference":
        return token_attention_ref(q, k, v, q_src, k_src, scale=scale, key_bias=key_bias, key_repr=key_repr)
    from .head_groups import GROUPABLE, grouped_token_attention

    lengths = None
    if q.is_cuda or (_TRITON_IMPORT_ERROR is None and interpreting() and method != "auto"):
        if _TRITON_IMPORT_ERROR is None and q.dtype in SUPPORTED_DTYPES:
            from . import token_attention_compact as ca

            q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
            q_src, k_src = q_src.contiguous(), k_src.contiguous()
            D = q.shape[-1]
            sdpa_ok = D % 8 == 0 and D <= 256
            if (kept is not None and expected is None and method in ("auto", "compact") and D + 8 <= 256
                    and D % 8 == 0 and (q.dtype != torch.float32 or method == "compact")):  # static kept sizes: no host sync
                ar = torch.arange(q.shape[2], device=q.device, dtype=q_src.dtype)
                lq, lk = (q_src == ar).sum(-1, dtype=torch.int32), (k_src == ar).sum(-1, dtype=torch.int32)
                mq, mk = int(kept[0]), int(kept[1])
                valid = (lq == mq).all() & (lk == mk).all()  # checked on the device: NaN out when False
                return ca.token_attention_compact(q, k, v, q_src, k_src, scale=scale, key_bias=key_bias,
                                                  lengths=(lq, lk, mq, mk), key_repr=key_repr, valid=valid)
            if method in ("auto", "classes") and sdpa_ok and (q.dtype != torch.float32 or method == "classes"):
                from . import class_attention as cl

                if expected is not None:  # static sizes from the caller: no host sync
                    expected = (expected[0], {c + 1: n for c, n in enumerate(expected[1:])})
                prepare = None if expected is not None else (k, v, key_repr)  # keys merged before the sync
                lay = cl.class_layout(q_src, k_src, key_bias, expected, prepare,  # the one host sync, unless
                                      None if expected is not None else known)  # expected or known
                if lay.reason is None:
                    return cl.token_attention_classes(q, k, v, q_src, k_src, scale=scale, key_bias=key_bias,
                                                      key_repr=key_repr, layout=lay)
                if group and lay.reason.startswith(GROUPABLE):  # heads too unlike for one layout: per group
                    out = grouped_token_attention(
                        lambda *x, known: _token_attention_impl(*x, scale, key_bias, key_repr, method, group=False,
                                                                known=known),
                        q, k, v, q_src, k_src, key_bias, lay)
                    if out is not None:
                        return out
                if method == "classes":
                    cl._warn_once(f"the count-class path cannot run this plan ({lay.reason}); using compaction")
                lengths, ratio = lay.lengths, lay.pad_ratio
            if lengths is None:
                ar = torch.arange(q.shape[2], device=q.device, dtype=q_src.dtype)
                lq, lk = (q_src == ar).sum(-1, dtype=torch.int32), (k_src == ar).sum(-1, dtype=torch.int32)
                mq, mk, ratio = ca.padded_pair_ratio(lq, lk)  # the one host sync
                lengths = (lq, lk, mq, mk)
            use_compact = method in ("compact", "classes") or (method == "auto" and ca.use_compaction(q, ratio))
            if use_compact or D not in SUPPORTED_HEAD_DIMS or key_repr == "mean":
                if D % 8 == 0 and D + 8 <= 256:
                    return ca.token_attention_compact(q, k, v, q_src, k_src, scale=scale, key_bias=key_bias,
                                                      lengths=lengths, key_repr=key_repr)
        reason = triton_unsupported_reason(q)
        if reason is None and key_repr == "mean":
            reason = "key_repr='mean' has no varlen Triton kernel for this head dim"
        if reason is None:
            from .token_attention_triton import token_attention_triton

            return token_attention_triton(q, k, v, q_src, k_src, scale=scale, key_bias=key_bias, lengths=lengths)
        _warn_once(reason)
    return token_attention_ref(q, k, v, q_src, k_src, scale=scale, key_bias=key_bias, key_repr=key_repr)


@torch.library.custom_op("timeripple::token_attention", mutates_args=())
def _token_attention_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_src: torch.Tensor, k_src: torch.Tensor,
    scale: float, key_bias: torch.Tensor | None, key_repr: str = "source", method: str = "auto",
    expected: list[int] | None = None, kept: list[int] | None = None,
) -> torch.Tensor:
    return _token_attention_impl(q, k, v, q_src, k_src, scale, key_bias, key_repr, method, expected, kept)


@_token_attention_op.register_fake
def _token_attention_fake(q, k, v, q_src, k_src, scale, key_bias, key_repr="source", method="auto", expected=None,
                          kept=None):
    return torch.empty_like(q, memory_format=torch.contiguous_format)


def token_attention(q, k, v, q_src, k_src, *, scale=None, key_bias=None, key_repr="source",
                    method="auto", expected=None, kept=None) -> torch.Tensor:
    """Attention over the kept tokens of a token plan; reused queries copy their source's row.

    Args:
        q, k, v (`torch.Tensor`): ``(B, H, N, D)``, one floating dtype.
        q_src, k_src (`torch.Tensor`): int32/int64 ``(B, H, N)``: ``src[i] == i`` for a computed token,
            else the index of its resolved source (a computed token).
        scale (`float`, *optional*): score scale, default ``1 / sqrt(D)``.
        key_bias (`torch.Tensor`, *optional*): additive per-key bias broadcastable to ``(B, N)``
            (``-inf`` masks a key; a bool tensor means True = keep).
        key_repr (`str`, defaults to `"source"`): a merged key is its source's ``k`` (``"source"``) or the
            mean ``k`` of its group (``"mean"``); ``v`` is always the group mean.
        method (`str`, defaults to `"auto"`): ``"auto"`` (below), or force ``"classes"`` (bias-free count
            classes), ``"compact"``, ``"triton"`` (varlen kernel) or ``"reference"`` (plain torch). A forced
            path that cannot run the input falls back to one that can, with one warning.
        expected (`list[int]`, *optional*): ``[kept queries, keys of count 1, keys of count 2, ...]`` per
            head when the caller knows them (budget mode with keys in pairs): the count-class path then
            makes no host sync; a plan without these sizes (non-finite scores) gives NaN, never a result
            built on wrong sizes.
        kept (`list[int]`, *optional*): ``[kept queries, kept keys]`` per head when the caller knows them
            (budget mode, any plan): the compaction path (fp16/bf16, ``D % 8 == 0``) then makes no host
            sync; a plan without these sizes gives NaN. Ignored when ``expected`` is given.

    Returns:
        ``(B, H, N, D)`` in ``q``'s dtype. The more tokens are reused (fewer kept), the faster: cost is
        about ``kept_q * kept_k`` pairs per head.

    Example::

        >>> q = k = v = torch.randn(1, 2, 6, 64)
        >>> src = torch.tensor([0, 0, 2, 3, 3, 5]).expand(1, 2, 6)
        >>> token_attention(q, k, v, src, src).shape
        torch.Size([1, 2, 6, 64])
    """
    from .._validation import value_error
    from .token_attention_torch import check_key_repr

    check_token_inputs(q, k, v, q_src, k_src)
    check_key_repr(key_repr)
    if method not in METHODS:
        raise value_error("method", method, f"must be one of {METHODS}", "pass method='auto'")
    B, H, N, D = q.shape
    scale = D ** -0.5 if scale is None else float(scale)
    kb = normalize_key_bias(key_bias, B, N, q.device)
    expected = None if expected is None else [int(x) for x in expected]
    kept = None if kept is None else [int(x) for x in kept]
    return _token_attention_op(q, k, v, q_src.int(), k_src.int(), scale, kb, key_repr, method, expected, kept)
