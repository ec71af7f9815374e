"""Channel mode (the paper): build ``q̃``/``k̃`` from the detected sources and count what is skipped.

``q̃``, ``k̃`` are ``q``, ``k`` with every reused element replaced by its resolved source's value (per
channel); attention is then ordinary SDPA on ``(q̃, k̃, v)``. That is exactly what the paper computes.
On tensor cores the product stays dense, so the savings here are counted, not timed.
"""

from __future__ import annotations

import torch

from .detect import AXES


def split_video(x: torch.Tensor, text_len: int, text_position: str) -> tuple[torch.Tensor, int]:
    """Return the video slice of ``x`` ``(B, H, N, D)`` along dim 2 and its start offset."""
    n = x.shape[2]
    start = text_len if (text_position == "before" and text_len) else 0
    return x[:, :, start : start + n - text_len], start


def apply_sources(x: torch.Tensor, src: torch.Tensor, start: int) -> torch.Tensor:
    """``x`` ``(B, H, N, D)`` with its video slice ``[start, start + Nv)`` gathered by ``src``.

    Args:
        src (`torch.Tensor`): int64 ``(B, H, Nv, D)``, the video index whose value each element takes.
    Returns:
        `torch.Tensor`: a new ``(B, H, N, D)`` tensor in ``x``'s dtype; text tokens are unchanged.
    """
    nv = src.shape[2]
    out = x.clone()
    out[:, :, start : start + nv] = torch.gather(x[:, :, start : start + nv], 2, src)  # (B, H, Nv, D)
    return out


def channel_qk_savings(src_q: torch.Tensor, src_k: torch.Tensor, n_q: int, n_k: int) -> torch.Tensor:
    """Exact fraction of ``q kᵀ`` partial products skipped, per head, mean over the batch.

    For each ``(b, h, c)`` with ``r_q`` reused query and ``r_k`` reused key elements in channel ``c``,
    ``skipped = N_q·N_k - (N_q - r_q)(N_k - r_k)``; summed over ``c`` and divided by ``N_q·N_k·D``.
    ``n_q``/``n_k`` count the whole sequence (text tokens are never reused).

    Returns:
        `torch.Tensor`: ``(H,)`` float64 on the CPU.
    """
    idx = torch.arange(src_q.shape[2], device=src_q.device).view(1, 1, -1, 1)
    r_q = (src_q != idx).sum(dim=2)  # (B, H, D)
    r_k = (src_k != idx).sum(dim=2)  # (B, H, D)
    return qk_savings_from_counts(r_q, r_k, n_q, n_k).cpu()  # (H,)


def qk_savings_from_counts(r_q: torch.Tensor, r_k: torch.Tensor, n_q: int, n_k: int) -> torch.Tensor:
    """``channel_qk_savings`` from the reused counts ``r_q``, ``r_k`` ``(B, H, D)`` per channel.

    Returns:
        `torch.Tensor`: ``(H,)`` float64 on the counts' device (no host sync).
    """
    r_q, r_k = r_q.double(), r_k.double()
    skipped = n_q * n_k - (n_q - r_q) * (n_k - r_k)  # (B, H, D)
    return (skipped.sum(-1) / (n_q * n_k * r_q.shape[-1])).mean(0)  # (H,)


def reused_fractions(via: torch.Tensor, axes=AXES) -> dict[str, float]:
    """Fraction of entries of ``via`` (int8, -1 = computed) reused through each axis of ``axes``."""
    total = max(via.numel(), 1)
    counts = torch.stack([(via == AXES.index(a)).sum() for a in axes]).cpu().tolist() if axes else []
    return {a: c / total for a, c in zip(axes, counts)}
