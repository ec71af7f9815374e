r"""TimeRipple inside SVG-style masked attention: the paper's "TIMERIPPLE 75% + SVG 70%" row.

Per call: TimeRipple's channel-mode detection replaces reused elements of ``q`` and ``k`` by their
sources (``q̃``, ``k̃``, exactly as :func:`timeripple.ripple_attention` in channel mode), then the
SVG-style attention (:mod:`timeripple.peers.svg`) chooses a spatial or temporal mask per head on ``q̃``,
``k̃`` and attends under it.

Savings are **counted** in the paper's unit, partial products of ``q kᵀ``: product ``(i, j, c)`` is
computed iff the pair ``(i, j)`` is inside the chosen mask and neither ``q[i, c]`` nor ``k[j, c]`` is
reused, plus SVG's ``num_sampled`` profiled rows of ``D`` products each. So the two savings compose
multiplicatively where they are independent, and the count says exactly what they add up to.

This is a counted reference, not a fast path: the attention is SVG's (masked SDPA, or FlexAttention on
CUDA) over ``q̃``, ``k̃``, and the count multiplies each ``(N, N)`` mask with the ``(B, H, N, D)`` map of
computed key channels, so it is meant for the tiny model and captured calls (``N`` of a few thousand),
not for full-size video models.
"""

from __future__ import annotations

import torch

from ..attention import channel_reuse
from ..options import check_geometry, check_mask, check_tensors, check_text, normalize_thresholds
from .. import sequence
from .stats import PeerCallStats
from .svg import svg_plan, svg_run

__all__ = ["ripple_svg_attention"]


def _computed(via: torch.Tensor, n: int, start: int) -> torch.Tensor:
    """``(B, H, N, D)`` float: 1 where the element is computed (text tokens and non-reused video)."""
    B, H, nv, D = via.shape
    a = torch.ones(B, H, n, D, dtype=torch.float32, device=via.device)
    a[:, :, start : start + nv] = (via < 0).float()
    return a


def ripple_svg_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    grid,
    threshold,
    sparsity: float,
    text_len: int = 0,
    text_position: str = "after",
    attn_mask: torch.Tensor | None = None,
    window: int = 2,
    axes=("t", "y", "x"),
    priority=("t", "y", "x"),
    num_sampled: int = 64,
    scale: float | None = None,
    backend: str = "auto",
    return_stats: bool = False,
):
    r"""TimeRipple channel reuse (threshold ``θ``) inside SVG-style sparse attention (``sparsity``).

    Args:
        q, k, v, grid, text_len, text_position, attn_mask, window, axes, priority, scale: as for
            :func:`timeripple.ripple_attention` (channel mode).
        threshold (`float` or `dict`): TimeRipple's ``θ``; ``0`` reuses nothing (plain SVG-style attention).
        sparsity (`float`): as for :func:`timeripple.peers.svg_attention`.
        num_sampled, backend: as for :func:`timeripple.peers.svg_attention`.
        return_stats (`bool`): also return a [`PeerCallStats`] with ``details["tr_only"]`` (the share of
            products TimeRipple alone skips) and ``details["svg_only"]`` (the share of pairs the mask skips).

    Returns:
        `torch.Tensor` ``(B, H, N, Dv)``, or ``(out, stats)``.

    Example:
        >>> import torch
        >>> from timeripple.peers import ripple_svg_attention
        >>> q = k = v = torch.randn(1, 2, 4 * 16, 8)
        >>> out, stats = ripple_svg_attention(q, k, v, grid=(4, 4, 4), threshold=0.5, sparsity=0.5,
        ...                                   num_sampled=4, return_stats=True)
        >>> stats.qk_savings_mean >= stats.details["svg_only"] - 0.1
        True
    """
    check_tensors(q, k, v)
    B, H, N, D = q.shape
    grid = tuple(int(g) for g in grid)
    check_geometry(grid, window, axes, priority)
    check_text(text_len, text_position, grid, N)
    check_mask(attn_mask, q)
    scale = D ** -0.5 if scale is None else float(scale)
    thresholds = normalize_thresholds(threshold, axes)
    q_t, k_t, _, _, via_q, via_k = channel_reuse(
        q, k, grid=grid, thresholds=thresholds, text_len=text_len, text_position=text_position,
        window=window, priority=priority, channel_alpha=None,
    )
    plan = svg_plan(q_t, k_t, v, grid=grid, sparsity=sparsity, text_len=text_len, text_position=text_position,
                    attn_mask=attn_mask, num_sampled=num_sampled, scale=scale)
    out, used = svg_run(q_t, k_t, v, plan, attn_mask=attn_mask, scale=scale, backend=backend)
    if not return_stats:
        return out
    start = sequence.split_video(q, text_len, text_position)[1]
    a, b = _computed(via_q, N, start), _computed(via_k, N, start)  # (B, H, N, D)
    # products inside each mask, sum_ijc m_ij a_ic b_jc = sum_ic a_ic (m b)_ic: no (B, H, N, N) tensor (the
    # two masks are (N, N), shared by every head); every term is an integer <= N, exact in float32
    inside = [(a * (m.to(a.dtype) @ b)).sum(dim=(-1, -2), dtype=torch.float64) for m in (plan.m_s, plan.m_t)]
    computed = torch.where(plan.choice, inside[1], inside[0]) + plan.rows.numel() * N * D  # (B, H)
    total = float(N * N * D)
    savings = (1.0 - computed / total).mean(0).cpu()
    reused_free = (a.sum(-2, dtype=torch.float64) * b.sum(-2, dtype=torch.float64)).sum(-1)  # (B, H): no mask
    tr_only = float(1.0 - reused_free.mean() / total)
    svg_only = float(1.0 - plan.kept_pairs().mean() / (N * N))
    stats = PeerCallStats(qk_savings=savings, qk_products=B * H * N * N * D, mode="ripple_svg",
                          details={**plan.details(), "backend": used, "tr_only": tr_only, "svg_only": svg_only})
    return out, stats
