"""Kernels of TimeRipple: token attention (Triton on CUDA, plain torch elsewhere) and fused detection.

Public functions:

* ``token_attention(q, k, v, q_src, k_src, *, scale=None, key_bias=None)``: attention over the kept
  tokens of a token plan (docs/ARCHITECTURE.md, "Token plan and token attention"). Registered as the
  custom op ``timeripple::token_attention`` so ``torch.compile`` traces through it.
* ``token_attention_ref``: the plain-torch reference (and fallback).

Dispatch on CUDA with Triton importable (one host sync for the kept lengths):

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

logger = logging.getLogger(__name__)

__all__ = ["token_attention", "token_attention_ref", "triton_available", "triton_unsupported_reason"]

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


def _token_attention_impl(q, k, v, q_src, k_src, scale, key_bias):
    lengths = None
    if q.is_cuda:
        if _TRITON_IMPORT_ERROR is None and q.dtype in SUPPORTED_DTYPES:
            from . import token_attention_compact as ca

            q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
            q_src, k_src = q_src.contiguous(), k_src.contiguous()
            ar = torch.arange(q.shape[2], device=q.device, dtype=q_src.dtype)
            lq, lk = (q_src == ar).sum(-1, dtype=torch.int32), (k_src == ar).sum(-1, dtype=torch.int32)
            mq, mk, ratio = ca.padded_pair_ratio(lq, lk)  # the one host sync
            lengths = (lq, lk, mq, mk)
            if ca.use_compaction(q, ratio) or q.shape[-1] not in SUPPORTED_HEAD_DIMS:
                if q.shape[-1] % 8 == 0 and q.shape[-1] + 8 <= 256:
                    return ca.token_attention_compact(q, k, v, q_src, k_src, scale=scale, key_bias=key_bias,
                                                      lengths=lengths)
        reason = triton_unsupported_reason(q)
        if reason is None:
            from .token_attention_triton import token_attention_triton

            return token_attention_triton(q, k, v, q_src, k_src, scale=scale, key_bias=key_bias, lengths=lengths)
        _warn_once(reason)
    return token_attention_ref(q, k, v, q_src, k_src, scale=scale, key_bias=key_bias)


@torch.library.custom_op("timeripple::token_attention", mutates_args=())
def _token_attention_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_src: torch.Tensor, k_src: torch.Tensor,
    scale: float, key_bias: torch.Tensor | None,
) -> torch.Tensor:
    return _token_attention_impl(q, k, v, q_src, k_src, scale, key_bias)


@_token_attention_op.register_fake
def _token_attention_fake(q, k, v, q_src, k_src, scale, key_bias):
    return torch.empty_like(q, memory_format=torch.contiguous_format)


def token_attention(q, k, v, q_src, k_src, *, scale=None, key_bias=None) -> torch.Tensor:
    """Attention over the kept tokens of a token plan; reused queries copy their source's row.

    Args:
        q, k, v (`torch.Tensor`): ``(B, H, N, D)``, one floating dtype.
        q_src, k_src (`torch.Tensor`): int32/int64 ``(B, H, N)``: ``src[i] == i`` for a computed token,
            else the index of its resolved source (a computed token).
        scale (`float`, *optional*): score scale, default ``1 / sqrt(D)``.
        key_bias (`torch.Tensor`, *optional*): additive per-key bias broadcastable to ``(B, N)``
            (``-inf`` masks a key; a bool tensor means True = keep).

    Returns:
        ``(B, H, N, D)`` in ``q``'s dtype. The more tokens are reused (fewer kept), the faster: cost is
        about ``kept_q * kept_k`` pairs per head.

    Example::

        >>> q = k = v = torch.randn(1, 2, 6, 64)
        >>> src = torch.tensor([0, 0, 2, 3, 3, 5]).expand(1, 2, 6)
        >>> token_attention(q, k, v, src, src).shape
        torch.Size([1, 2, 6, 64])
    """
    check_token_inputs(q, k, v, q_src, k_src)
    B, H, N, D = q.shape
    scale = D ** -0.5 if scale is None else float(scale)
    kb = normalize_key_bias(key_bias, B, N, q.device)
    return _token_attention_op(q, k, v, q_src.int(), k_src.int(), scale, kb)
