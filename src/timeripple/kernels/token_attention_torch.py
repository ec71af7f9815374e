"""Plain-torch references of the token-mode kernels (any device).

``token_attention_ref`` is the executable definition of token attention (docs/ARCHITECTURE.md,
"Token plan and token attention"); the Triton path in ``attention.py`` is tested against it and falls
back to it. It computes in float32 (float64 when the inputs are float64) and returns ``q``'s dtype.

Formulation: per (batch, head) the kept queries and kept keys are packed to the front of padded
``(B, H, Mq, D)`` / ``(B, H, Mk, D)`` tensors (``Mq``/``Mk`` = the largest kept count over the heads).
Padding keys get a ``-inf`` bias, so a single SDPA call with a broadcast ``(B, H, 1, Mk)`` additive mask
handles heads of different lengths. Reused query rows are copied from their source row at the end.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .._validation import type_error, value_error

__all__ = ["token_attention_ref", "check_token_inputs", "normalize_key_bias", "random_token_plan"]


def check_token_inputs(q, k, v, q_src, k_src) -> None:
    """Validate shapes and dtypes of the token-attention inputs (shared with the Triton launcher)."""
    for name, t in (("q", q), ("k", k), ("v", v), ("q_src", q_src), ("k_src", k_src)):
        if not isinstance(t, torch.Tensor):
            raise type_error(name, t, "a torch.Tensor", f"pass `{name}` as a tensor")
    if q.dim() != 4:
        raise value_error("q.shape", tuple(q.shape), "must be (B, H, N, D)", "pass (B, H, N, D) tensors")
    if k.shape != q.shape or v.shape != q.shape:
        raise value_error(
            "k.shape / v.shape", (tuple(k.shape), tuple(v.shape)),
            f"must equal q.shape {tuple(q.shape)} (self-attention)", "pass q, k, v of one shape",
        )
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise value_error(
            "k.dtype / v.dtype", (k.dtype, v.dtype), f"must equal q.dtype {q.dtype}",
            "cast q, k and v to one dtype",
        )
    if not q.dtype.is_floating_point:
        raise value_error("q.dtype", q.dtype, "must be a floating dtype", "cast q, k, v to bf16/fp16/fp32")
    B, H, N, _ = q.shape
    for name, src in (("q_src", q_src), ("k_src", k_src)):
        if tuple(src.shape) != (B, H, N):
            raise value_error(f"{name}.shape", tuple(src.shape), f"must be (B, H, N) = {(B, H, N)}",
                              "build the plan with timeripple.token_plan")
        if src.dtype not in (torch.int32, torch.int64):
            raise value_error(f"{name}.dtype", src.dtype, "must be int32 or int64", f"use {name}.int()")
        if src.device != q.device:
            raise value_error(f"{name}.device", src.device, f"must be q's device {q.device}",
                              f"move {name} to {q.device}")


def normalize_key_bias(key_bias, B: int, N: int, device) -> torch.Tensor | None:
    """Return ``key_bias`` as a float32 (float64 if given so) ``(B, N)`` tensor (bool: True = keep, False = ``-inf``).

    Accepts any shape broadcastable to ``(B, N)``, and the SDPA key-mask shapes ``(B, 1, 1, N)`` /
    ``(B, 1, N)``.
    """
    if key_bias is None:
        return None
    if not isinstance(key_bias, torch.Tensor):
        raise type_error("key_bias", key_bias, "a torch.Tensor or None", "pass a (B, N) tensor")
    kb = key_bias
    while kb.dim() > 2 and kb.shape[1] == 1:  # (B, 1, 1, N) / (B, 1, N) -> (B, N)
        kb = kb.squeeze(1)
    try:
        kb = torch.broadcast_to(kb, (B, N))
    except RuntimeError:
        raise value_error("key_bias.shape", tuple(key_bias.shape), f"must broadcast to (B, N) = {(B, N)}",
                          "pass one additive bias per key and batch") from None
    if kb.dtype == torch.bool:
        kb = torch.zeros((B, N), dtype=torch.float32, device=kb.device).masked_fill(~kb, float("-inf"))
    dtype = torch.float64 if kb.dtype == torch.float64 else torch.float32
    return kb.to(device=device, dtype=dtype).contiguous()


def _pack(kept: torch.Tensor, M: int) -> torch.Tensor:
    """Indices of the True entries of ``kept`` (B, H, N), ascending, packed to the front: (B, H, M)."""
    B, H, N = kept.shape
    rank = kept.long().cumsum(-1) - 1                                   # (B, H, N)
    dest = torch.where(kept, rank, torch.full_like(rank, M))            # non-kept -> dump slot M
    ar = torch.arange(N, device=kept.device).expand(B, H, N)
    packed = torch.zeros((B, H, M + 1), dtype=torch.long, device=kept.device)
    packed.scatter_(2, dest, ar)  # dump slot gets arbitrary values, dropped below
    return packed[..., :M]                                              # (B, H, M)


def token_attention_ref(q, k, v, q_src, k_src, *, scale=None, key_bias=None) -> torch.Tensor:
    """Token attention in plain torch (reference and fallback of ``timeripple.kernels.token_attention``).

    Args:
        q, k, v (`torch.Tensor`): ``(B, H, N, D)``, one floating dtype.
        q_src, k_src (`torch.Tensor`): int ``(B, H, N)`` token plan: ``src[i] == i`` for a computed
            token, else the index of its resolved (computed) source.
        scale (`float`, *optional*): score scale, default ``1 / sqrt(D)``.
        key_bias (`torch.Tensor`, *optional*): additive per-key bias broadcastable to ``(B, N)``;
            ``-inf`` masks a key; a bool tensor means True = keep.

    Returns:
        ``(B, H, N, D)`` in ``q``'s dtype. A query whose kept keys are all masked gets zeros.

    Example::

        >>> q = k = v = torch.randn(1, 2, 6, 8)
        >>> src = torch.tensor([0, 0, 2, 3, 3, 5]).expand(1, 2, 6)
        >>> token_attention_ref(q, k, v, src, src).shape
        torch.Size([1, 2, 6, 8])
    """
    check_token_inputs(q, k, v, q_src, k_src)
    B, H, N, D = q.shape
    if N == 0:
        return torch.empty_like(q)
    cdt = torch.float64 if q.dtype == torch.float64 else torch.float32
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    q_src, k_src = q_src.long(), k_src.long()
    ar = torch.arange(N, device=q.device)
    kept_q, kept_k = q_src == ar, k_src == ar                           # (B, H, N)
    Mq, Mk = int(kept_q.sum(-1).max()), int(kept_k.sum(-1).max())

    # -- merge keys: count and mean of v per kept key --
    count = torch.zeros((B, H, N), dtype=cdt, device=q.device)
    count.scatter_add_(2, k_src, torch.ones_like(count))                # (B, H, N), 0 off the kept keys
    vsum = torch.zeros((B, H, N, D), dtype=cdt, device=q.device)
    vsum.scatter_add_(2, k_src[..., None].expand(B, H, N, D), v.to(cdt))
    idx_k = _pack(kept_k, Mk)                                           # (B, H, Mk)
    valid_k = torch.arange(Mk, device=q.device) < kept_k.sum(-1, keepdim=True)  # (B, H, Mk)
    cnt_k = count.gather(2, idx_k).clamp_min(1.0)                       # (B, H, Mk)
    vm = vsum.gather(2, idx_k[..., None].expand(B, H, Mk, D)) / cnt_k[..., None]  # (B, H, Mk, D)
    kc = k.to(cdt).gather(2, idx_k[..., None].expand(B, H, Mk, D))      # (B, H, Mk, D)

    # -- per-key bias: log(count) + key_bias, -inf on padding --
    bias = cnt_k.log()
    kb = normalize_key_bias(key_bias, B, N, q.device)
    if kb is not None:
        bias = bias + kb.to(cdt)[:, None, :].expand(B, H, N).gather(2, idx_k)
    bias = bias.masked_fill(~valid_k, float("-inf"))                    # (B, H, Mk)
    any_key = torch.isfinite(bias).any(-1)                              # (B, H)

    # -- attention of the kept queries over the kept keys --
    idx_q = _pack(kept_q, Mq)                                           # (B, H, Mq)
    qc = q.to(cdt).gather(2, idx_q[..., None].expand(B, H, Mq, D))      # (B, H, Mq, D)
    safe_bias = torch.where(any_key[..., None], bias, torch.zeros_like(bias))
    oc = F.scaled_dot_product_attention(qc, kc, vm, attn_mask=safe_bias[:, :, None, :], scale=scale)
    oc = torch.where(any_key[..., None, None], oc, torch.zeros_like(oc))  # (B, H, Mq, D)

    # -- scatter: out[i] = out_compact[rank(q_src[i])] --
    rank_q = kept_q.long().cumsum(-1) - 1                               # (B, H, N)
    row = rank_q.gather(2, q_src)                                       # (B, H, N)
    out = oc.gather(2, row[..., None].expand(B, H, N, D))               # (B, H, N, D)
    return out.to(q.dtype)


def random_token_plan(B, H, N, keep, *, text_len=0, text_position="after", device="cpu", generator=None):
    """A valid random token plan for tests and benchmarks: ``(q_src, k_src)`` int32 ``(B, H, N)``.

    ``keep`` is the probability that a video token is kept: a float, or a ``(B, H)`` tensor for
    per-head lengths (separately drawn for the q and k sides). The first video token and all text
    tokens are kept; a reused token's source is the closest kept token before it.
    """
    if text_position not in ("after", "before"):
        raise value_error("text_position", text_position, "must be 'after' or 'before'", "pick one")
    keep = torch.as_tensor(keep, dtype=torch.float32).expand(B, H)[..., None]
    ar = torch.arange(N)
    video = (ar < N - text_len) if text_position == "after" else (ar >= text_len)
    first_video = 0 if text_position == "after" else text_len
    plans = []
    for _ in range(2):
        kept = torch.rand((B, H, N), generator=generator) < keep        # (B, H, N)
        kept |= ~video
        kept[..., first_video] = True
        src = torch.where(kept, ar, torch.zeros_like(ar)).cummax(-1).values  # closest kept at or before i
        plans.append(src.to(device=device, dtype=torch.int32))
    return plans[0], plans[1]
