"""Token sources with keys merged **in disjoint pairs only** (``token_keys="pairs"``, window 2).

Every merged key then has count 2 and, in budget mode, every head the same number of pairs, so token
attention needs no per-key bias (``kernels.class_attention``). 
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch

from ._validation import value_error
from .detect import axis_score_table, budget_select, checked_axes, eligible_count
from .options import AXES, check_geometry

__all__ = ["detect_pair_sources", "pair_sources_from_scores", "pair_count", "pair_budgets_for_pair_savings"]


def detect_pair_sources(x, grid, thresholds, *, priority=AXES, criterion="strict", fraction=0.9, budget=None):
    """The plain-torch pairs plan of ``x`` ``(B, H, Nv, D)`` (window 2): :func:`pair_sources_from_scores`
    on ``detect.axis_score_table``. Returns ``(src int64, via int8)`` ``(B, H, Nv)``."""
    axes = checked_axes(thresholds, priority)
    if budget is None:
        axes = [a for a in axes if float(thresholds[a]) != 0]
    scores = axis_score_table(x, grid, 2, criterion, fraction, axes)  # (B, H, Nv, 3)
    src, via = pair_sources_from_scores(scores, grid, thresholds, priority=priority, budget=budget)
    return src.long(), via


def pair_sources_from_scores(
    scores: torch.Tensor,
    grid: Sequence[int],
    thresholds: Mapping[str, float],
    *,
    priority: Sequence[str] = AXES,
    budget: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token sources that merge tokens **in disjoint pairs only** (``token_keys="pairs"``, window 2).

    Each 2x2x2 cube of the grid (partial at odd edges) is split into pairs along one axis: the axis
    of ``thresholds`` whose pairs have the smallest mean score in that cube (first in ``priority`` on
    ties; an axis with no pair in the cube is never chosen). A pair's second member (odd coordinate on
    that axis) may then reuse the first: where its score is below the axis threshold, or, with
    ``budget``, for the ``round(budget · candidates)`` smallest scores per (b, h) (candidates = second
    members with a finite score, about half of the tokens). No source is itself reused (no chains), so
    every merged key has count 2, and in budget mode every head has the same number of pairs: token
    attention then needs no per-key bias (``kernels.class_attention``).

    Args:
        scores (`torch.Tensor`): float32 ``(B, H, Nv, 3)`` window-2 scores (``token_axis_scores``).
        grid, thresholds, priority, budget: as in :func:`token_sources_from_scores`.

    Returns:
        ``(src int32 (B, H, Nv), via int8 (B, H, Nv))`` as :func:`token_sources_from_scores`.
    """
    B, H, Nv, _ = scores.shape
    device = scores.device
    axes = checked_axes(thresholds, priority)
    if budget is None:
        axes = [a for a in axes if float(thresholds[a]) != 0]
    idx = torch.arange(Nv, device=device)
    via = torch.full((B, H, Nv), -1, dtype=torch.int8, device=device)
    if not axes:
        return idx.expand(B, H, Nv).to(torch.int32).contiguous(), via
    T, Hg, Wg = grid
    coord = {"t": idx // (Hg * Wg), "y": (idx // Wg) % Hg, "x": idx % Wg}
    stride = {"t": Hg * Wg, "y": Wg, "x": 1}
    cy, cx = -(-Hg // 2), -(-Wg // 2)
    cube = (coord["t"] // 2) * (cy * cx) + (coord["y"] // 2) * cx + coord["x"] // 2  # (Nv,)
    n_cubes = -(-T // 2) * cy * cx
    means, members, cols = [], [], []
    for a in axes:
        member = coord[a] % 2 == 1                                     # (Nv,) second member on axis a
        col = scores[..., AXES.index(a)].nan_to_num(nan=math.inf)      # (B, H, Nv)
        col = torch.where(member, col, torch.zeros_like(col))
        n = torch.zeros(n_cubes, device=device).index_add_(0, cube, member.float())  # pairs per cube
        total = torch.zeros((B, H, n_cubes), device=device).index_add_(2, cube, col)
        means.append(torch.where(n > 0, total / n.clamp_min(1), math.inf))
        members.append(member)
        cols.append(col)
    choice = torch.stack(means, -1).argmin(-1).gather(2, cube.expand(B, H, Nv))  # (B, H, Nv) axis slot
    best = torch.full((B, H, Nv), math.inf, device=device)
    partner = idx.expand(B, H, Nv)
    thr = torch.zeros((B, H, Nv), device=device)
    axis_id = torch.full_like(via, -1)
    for i, a in enumerate(axes):
        on = (choice == i) & members[i]                                # (B, H, Nv)
        best = torch.where(on, cols[i], best)
        partner = torch.where(on, idx - stride[a], partner)
        thr = torch.where(on, float(thresholds[a]), thr)
        axis_id = torch.where(on, AXES.index(a), axis_id)
    any_pass = budget_select(best, budget) if budget is not None else best < thr
    src = torch.where(any_pass, partner, idx)
    via = torch.where(any_pass, axis_id, via)
    return src.to(torch.int32), via


def pair_count(grid: Sequence[int], axes: Sequence[str]) -> int:
    """Most pairs :func:`pair_sources_from_scores` can form on ``grid`` (window 2): a cube of extents
    ``e`` in {1, 2}³ gives ``prod(e) / 2`` pairs when one of ``axes`` has extent 2 there, else none."""
    total = 0
    for et in (2, 1):
        for ey in (2, 1):
            for ex in (2, 1):
                n = 1
                for e, length in zip((et, ey, ex), grid):
                    n *= length // 2 if e == 2 else length % 2
                if n and any(e == 2 for e, a in zip((et, ey, ex), AXES) if a in axes):
                    total += n * et * ey * ex // 2
    return total


def pair_budgets_for_pair_savings(
    target: float,
    grid: Sequence[int],
    axes: Sequence[str] = AXES,
    text_len: int = 0,
    key_budget: float = 1.0,
) -> tuple[float, float]:
    """``(budget, key_budget)`` that give ``target`` pair savings with ``token_keys="pairs"``.

    Keys merge ``round(key_budget · P)`` of the ``P`` = :func:`pair_count` pairs (key-heavy by default:
    every pair), queries (chained, as today) take the rest: ``kept_q = (1 - target)·N² / kept_k``. When
    the keys alone save more than ``target``, ``key_budget`` is lowered so that queries reuse nothing.

    Example:
        >>> from timeripple.detect import pair_budgets_for_pair_savings
        >>> [round(b, 4) for b in pair_budgets_for_pair_savings(0.75, (4, 4, 4))]  # 32 pairs, 56 eligible
        [0.5714, 1.0]
    """
    if not 0 <= target < 1 or math.isnan(target):
        raise value_error("target", target, "pair savings must be in [0, 1)", "pass e.g. 0.75")
    if not 0 <= key_budget <= 1:
        raise value_error("key_budget", key_budget, "must be in [0, 1]", "pass e.g. 1.0")
    check_geometry(grid, 2, axes)
    n_total = math.prod(grid) + text_len
    pairs, eligible = pair_count(grid, axes), eligible_count(grid, 2, axes)
    kept_k = n_total - round(key_budget * pairs)
    if 1 - kept_k / n_total > target and pairs:  # keys alone save more: fewer pairs, no query reuse
        key_budget = target * n_total / pairs
        kept_k = n_total - round(key_budget * pairs)
    kept_q = (1 - target) * n_total**2 / kept_k
    reuse_q = n_total - kept_q
    if reuse_q > eligible + 1e-9:
        best = 1 - (n_total - eligible) * (n_total - pairs) / n_total**2
        raise value_error("target", target, f"pairs on grid {tuple(grid)} reach at most {best:.4f} pair savings",
                          "lower the target, or use token_keys='chain'")
    return max(reuse_q, 0.0) / eligible if eligible else 0.0, key_budget
