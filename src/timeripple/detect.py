"""Detection: which video elements (channel mode) or tokens (token mode) may reuse a neighbour.

Everything here works on the **video part** of ``q`` or ``k``, shape ``(B, H, Nv, D)``, t-major on the
grid ``(T, Hg, Wg)`` (``idx = t*Hg*Wg + y*Wg + x``). The rules (docs/ARCHITECTURE.md "Detection"):

* along axis ``a`` the positions are cut into windows of ``window`` consecutive positions starting at
  multiples of ``window``; ``Δ`` is the population std of the window's values per channel, in float32;
  a trailing partial window of size >= 2 is checked the same way, size 1 reuses nothing;
* a non-first window member passes axis ``a`` when ``Δ < θ_a``; its source on that axis is the first
  member of its window, i.e. the coordinate ``c - c % window``;
* OR over axes; the source is the partner on the first passing axis in ``priority`` order; chains are
  resolved so every source is a computed element;
* a window holding any non-finite value has ``Δ = NaN`` and never passes.

These functions are the plain-torch specification that the fused Triton detection is tested against.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch

from ._validation import value_error
from .options import AXES, TOKEN_KEYS, check_geometry  # noqa: F401 (TOKEN_KEYS re-exported)



# ----------------------------------------------------------------------------------------------
# geometry


def axis_partners(
    grid: Sequence[int], axis: str, window: int, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(partner, non_first)`` for every video token on ``axis``.

    ``partner`` (``(Nv,)`` int64) is the flat index of the first member of the token's window on that
    axis; ``non_first`` (``(Nv,)`` bool) is True for tokens that are not the first member (only those
    can reuse). A trailing window of size 1 holds only a first member, so it reuses nothing.
    """
    T, Hg, Wg = (int(g) for g in grid)
    key = (T, Hg, Wg, axis, int(window), str(torch.device(device if device is not None else "cpu")))
    hit = _GEOMETRY.get(key)
    if hit is not None:  # the same tensors every call: no index arithmetic on the device per call
        return hit
    idx = torch.arange(T * Hg * Wg, device=device)  # (Nv,)
    coord = {"t": idx // (Hg * Wg), "y": (idx // Wg) % Hg, "x": idx % Wg}[axis]
    stride = {"t": Hg * Wg, "y": Wg, "x": 1}[axis]
    offset = coord % window  # position inside the window
    out = (idx - offset * stride, offset != 0)
    if _cacheable(idx):
        if len(_GEOMETRY) >= 64:
            _GEOMETRY.clear()
        _GEOMETRY[key] = out
    return out


def _cacheable(x: torch.Tensor) -> bool:
    """A plain tensor computed eagerly: not a fake or functional tensor of a compile trace, and not made
    inside a CUDA-graph capture (whose kernels have not run yet)."""
    if type(x) is not torch.Tensor or torch.compiler.is_compiling():
        return False
    return not (x.is_cuda and torch.cuda.is_current_stream_capturing())


# axis_partners results by (grid, axis, window, device): read-only, shared by every call on that grid
_GEOMETRY: dict = {}


def window_deltas(x: torch.Tensor, grid: Sequence[int], axis: str, window: int) -> torch.Tensor:
    """Per-element window deviation ``Δ`` along one axis.

    Args:
        x (`torch.Tensor`): video part of q or k, ``(B, H, Nv, D)``, any float dtype.
        grid (`tuple[int, int, int]`): ``(T, Hg, Wg)`` with ``T*Hg*Wg == Nv``.
        axis (`str`): ``"t"``, ``"y"`` or ``"x"``.
        window (`int`): window size ``K >= 2``.

    Returns:
        `torch.Tensor`: float32 ``(B, H, Nv, D)``; each element holds the population std (over the
        ``K`` window members, per channel) of the window it belongs to on ``axis``. ``NaN`` for windows
        of size 1 and for windows holding a non-finite value.
    """
    B, H, Nv, D = x.shape
    T, Hg, Wg = grid
    dim = 2 + AXES.index(axis)
    x6 = x.float().reshape(B, H, T, Hg, Wg, D).movedim(dim, -2)  # (B, H, o1, o2, L, D)
    length = x6.shape[-2]
    n_full, rest = divmod(length, window)
    parts = []
    if n_full:
        full = x6[..., : n_full * window, :].unflatten(-2, (n_full, window))  # (..., nf, K, D)
        parts.append(window_std(full).unsqueeze(-2).expand_as(full).flatten(-3, -2))
    if rest:
        tail = x6[..., n_full * window :, :].unsqueeze(-3)  # (..., 1, r, D)
        if rest >= 2:
            parts.append(window_std(tail).unsqueeze(-2).expand_as(tail).flatten(-3, -2))
        else:
            parts.append(torch.full_like(tail.flatten(-3, -2), math.nan))
    delta = torch.cat(parts, dim=-2) if len(parts) > 1 else parts[0]  # (B, H, o1, o2, L, D)
    return delta.movedim(-2, dim).reshape(B, H, Nv, D)


def window_std(w: torch.Tensor) -> torch.Tensor:
    """Population std over dim -2 of ``(..., n, K, D)`` float32 windows; NaN if any member is not finite."""
    size = w.shape[-2]
    if size == 2:  # |a0 - a1| / 2: the same value as the two-pass formula, and much cheaper
        delta = (w.select(-2, 0) - w.select(-2, 1)).abs() * 0.5  # (..., n, D)
    else:  # two-pass population std; `Tensor.var` over a short strided dim is slow on the CPU
        dev = w - w.sum(dim=-2, keepdim=True) / size
        delta = ((dev * dev).sum(dim=-2) / size).sqrt()  # (..., n, D)
    return torch.where(torch.isfinite(w).all(dim=-2), delta, math.nan)


# ----------------------------------------------------------------------------------------------
# source resolution


def resolve_sources(src: torch.Tensor, max_hops: int) -> torch.Tensor:
    """Follow chains ``src = src[src]`` (along dim 2, per trailing index) until every source is its
    own source, i.e. a computed element. A partner always precedes its element (a smaller coordinate
    on one axis) and one hop fixes one axis, so ``max_hops = len(axes)`` is always enough; both
    invariants are asserted.

    Args:
        src (`torch.Tensor`): int64 ``(B, H, Nv)`` or ``(B, H, Nv, D)``, a source index per element.
        max_hops (`int`): the number of checked axes.
    """
    idx = torch.arange(src.shape[2], device=src.device).view(1, 1, -1, *([1] * (src.dim() - 3)))
    assert bool((src <= idx).all()), "a source must precede its element on the grid"
    for _ in range(max(1, max_hops)):
        nxt = torch.gather(src, 2, src)
        if torch.equal(nxt, src):
            return src
        src = nxt
    assert torch.equal(torch.gather(src, 2, src), src), "source chains longer than len(axes)"
    return src


def _sources_from_passes(
    passes: list[tuple[str, torch.Tensor]], partners: dict, shape: tuple, device
) -> tuple[torch.Tensor, torch.Tensor]:
    """OR over axes: the first passing axis (``passes`` is in priority order) gives the source."""
    Nv = shape[2]
    idx = torch.arange(Nv, device=device).view(1, 1, Nv, *([1] * (len(shape) - 3)))
    src = idx.expand(shape).clone()
    via = torch.full(shape, -1, dtype=torch.int8, device=device)
    for axis, ok in reversed(passes):  # lowest priority first, so higher priority overwrites
        partner = partners[axis].view(idx.shape)
        src = torch.where(ok, partner, src)
        via = torch.where(ok, AXES.index(axis), via)  # a Python scalar: no host-to-device copy
    return resolve_sources(src, len(passes)), via


def checked_axes(thresholds: Mapping[str, float], priority: Sequence[str]) -> list[str]:
    return [a for a in priority if a in thresholds]


# ----------------------------------------------------------------------------------------------
# channel granularity (the paper)


def detect_channel_sources(
    x: torch.Tensor,
    grid: Sequence[int],
    thresholds: Mapping[str, float],
    *,
    window: int = 2,
    priority: Sequence[str] = AXES,
    channel_alpha: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Channel-granularity detection (paper Eq. 3 + OR over axes + chain resolution).

    Args:
        x (`torch.Tensor`): video part of q or k, ``(B, H, Nv, D)``.
        grid (`tuple[int, int, int]`): ``(T, Hg, Wg)``.
        thresholds (`dict[str, float]`): ``θ`` per checked axis; axes absent or at ``0`` are not checked.
        window (`int`, defaults to 2): window size ``K``.
        priority (`tuple[str, ...]`): order in which passing axes are preferred as the source.
        channel_alpha (`float`, *optional*): if set, an element passes when
            ``Δ_c < α · mean_c Δ_c`` (mean over the D channels of its window) instead of ``Δ_c < θ_a``.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: ``src`` int64 ``(B, H, Nv, D)``, the video index whose
        value each element takes (itself when computed), and ``via`` int8 ``(B, H, Nv, D)``, the index
        in ``AXES`` of the axis the element is reused through (-1 when computed).
    """
    shape = tuple(x.shape)
    partners, passes = {}, []
    for axis in checked_axes(thresholds, priority):
        theta = float(thresholds[axis])
        if theta == 0:
            continue
        partner, non_first = axis_partners(grid, axis, window, x.device)
        delta = window_deltas(x, grid, axis, window)  # (B, H, Nv, D)
        bound = theta if channel_alpha is None else channel_alpha * delta.mean(-1, keepdim=True)
        partners[axis] = partner
        passes.append((axis, (delta < bound) & non_first.view(1, 1, -1, 1)))
    return _sources_from_passes(passes, partners, shape, x.device)


# ----------------------------------------------------------------------------------------------
# token granularity (our extension)


def token_scores(
    x: torch.Tensor,
    grid: Sequence[int],
    axis: str,
    window: int,
    criterion: str = "strict",
    fraction: float = 0.9,
) -> torch.Tensor:
    """Per-token score on one axis; the token passes the axis when ``score < θ_a``.

    ``strict``: ``max_c Δ_c``; ``fraction``: the ``ceil(fraction·D)``-th smallest ``Δ_c`` (so at
    least that many channels have ``Δ_c < θ``); ``rms``: ``sqrt(mean_c Δ_c²)``. NaN when any channel
    is NaN (non-finite input or a size-1 window).

    Returns:
        `torch.Tensor`: float32 ``(B, H, Nv)``.
    """
    delta = window_deltas(x, grid, axis, window)  # (B, H, Nv, D)
    if criterion == "strict":
        return delta.amax(dim=-1)  # amax propagates NaN
    if criterion == "rms":
        return delta.square().mean(dim=-1).sqrt()
    kth = max(1, math.ceil(fraction * delta.shape[-1] - 1e-9))
    score = delta.kthvalue(kth, dim=-1).values
    return torch.where(torch.isnan(delta).any(dim=-1), math.nan, score)


def axis_score_table(x, grid, window=2, criterion="strict", fraction=0.9, axes=AXES) -> torch.Tensor:
    """The ``(B, H, Nv, 3)`` float32 table of :func:`token_scores` on the axes ``t, y, x`` (NaN where a token
    is not a non-first window member, and in the columns of axes not in ``axes``): the plain-torch
    specification of ``kernels.detect_fused.token_axis_scores`` and the input of
    :func:`token_sources_from_scores`."""
    cols = []
    for axis in AXES:
        if axis in axes:
            _, non_first = axis_partners(grid, axis, window, x.device)
            score = token_scores(x, grid, axis, window, criterion, fraction)  # (B, H, Nv)
            cols.append(torch.where(non_first.view(1, 1, -1), score, math.nan))
        else:  # never read
            cols.append(torch.full(x.shape[:3], math.nan, device=x.device))
    return torch.stack(cols, dim=-1)


def detect_token_sources(
    x: torch.Tensor,
    grid: Sequence[int],
    thresholds: Mapping[str, float],
    *,
    window: int = 2,
    priority: Sequence[str] = AXES,
    criterion: str = "strict",
    fraction: float = 0.9,
    budget: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-granularity detection, per head (keys in disjoint pairs: ``pairs.detect_pair_sources``).

    Threshold mode (``budget=None``): a non-first window member passes axis ``a`` when its
    :func:`token_scores` is ``< θ_a``; OR over axes with ``priority``; chains resolved.

    Budget mode: the threshold values are ignored (the keys of ``thresholds`` still select the checked
    axes). Per ``(b, h)``, the ``round(budget · eligible)`` eligible tokens with the smallest score are
    reused, eligible = non-first on some checked axis with a finite score there. A token's score is its
    smallest score over those axes; its source is the partner on that axis (ties: ``priority`` order).

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: ``src`` int64 ``(B, H, Nv)`` and ``via`` int8
        ``(B, H, Nv)`` (index in ``AXES``, -1 when computed).
    """
    axes = checked_axes(thresholds, priority)
    if budget is None:  # an axis with θ = 0 passes nothing: no need to score it
        axes = [a for a in axes if float(thresholds[a]) != 0]
    scores = axis_score_table(x, grid, window, criterion, fraction, axes)  # (B, H, Nv, 3)
    src, via = token_sources_from_scores(scores, grid, thresholds, window=window, priority=priority, budget=budget)
    return src.long(), via


def token_sources_from_scores(
    scores: torch.Tensor,
    grid: Sequence[int],
    thresholds: Mapping[str, float],
    *,
    window: int = 2,
    priority: Sequence[str] = AXES,
    budget: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`detect_token_sources` from precomputed per-axis scores, without host syncs.

    The fast path of token mode on CUDA: ``scores`` is the float32 ``(B, H, Nv, 3)`` output of
    ``kernels.detect_fused.token_axis_scores`` (axes ``t, y, x``; NaN where a token is not a
    non-first window member or its window is not finite). Thresholding, budget selection (sort per
    (b, h) over ``Nv``; ties broken by token index, as the stable argsort of the plain path) and chain
    resolution (``len(axes)`` unconditional hops, no equality check) run on these small tensors.

    :func:`detect_token_sources` (the torch path) computes the same scores with :func:`token_scores`
    and selects through this function too, so both paths share one selection.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: ``src`` int32 ``(B, H, Nv)`` and ``via`` int8 ``(B, H, Nv)``.
    """
    B, H, Nv, _ = scores.shape
    device = scores.device
    axes = checked_axes(thresholds, priority)
    if budget is None:
        axes = [a for a in axes if float(thresholds[a]) != 0]
    idx = torch.arange(Nv, device=device)
    src = idx.expand(B, H, Nv)
    via = torch.full((B, H, Nv), -1, dtype=torch.int8, device=device)
    if not axes:
        return src.to(torch.int32).contiguous(), via
    # (B, H, Nv, A), priority order; no list indexing: that copies an index tensor to the GPU and syncs
    cols = torch.stack([scores[..., AXES.index(a)] for a in axes], -1)
    if budget is None:
        passes = torch.stack([cols[..., i] < float(thresholds[a]) for i, a in enumerate(axes)], -1)
        any_pass = passes.any(-1)  # NaN never passes
        best_axis = passes.int().argmax(-1)  # first passing axis in priority order
    else:
        best, best_axis = cols.nan_to_num(nan=math.inf).min(dim=-1)  # (B, H, Nv); first min on ties
        any_pass = budget_select(best, budget)
    partner = torch.stack([axis_partners(grid, a, window, device)[0] for a in axes])  # (A, Nv)
    chosen = partner[best_axis, idx]  # (B, H, Nv)
    src = torch.where(any_pass, chosen, idx)
    axis_id = torch.full_like(via, AXES.index(axes[0]))  # best_axis -> index into AXES, without a copy
    for i, a in enumerate(axes[1:], start=1):
        axis_id = torch.where(best_axis == i, AXES.index(a), axis_id)
    via = torch.where(any_pass, axis_id, via)
    for _ in range(len(axes)):  # one hop fixes one axis (see resolve_sources)
        src = torch.gather(src, 2, src)
    return src.to(torch.int32), via


def budget_select(best: torch.Tensor, budget: float) -> torch.Tensor:
    """Budget selection on ``best`` ``(B, H, Nv)`` (``+inf`` = ineligible): the ``round(budget · eligible)``
    smallest per (b, h), ties broken by token index (as a stable argsort). No host sync."""
    eligible = torch.isfinite(best)
    if float(budget) >= 1.0:  # every eligible token (the pooled plan's second pass): no sort
        return eligible
    n_reuse = torch.round(eligible.sum(-1, keepdim=True).double() * budget).long()  # (B, H, 1)
    ordered = torch.sort(best, dim=-1).values  # (B, H, Nv), +inf last
    kth = ordered.gather(-1, (n_reuse - 1).clamp_min(0))  # (B, H, 1): largest reused score
    below = best < kth
    ties = (best == kth) & eligible
    room = n_reuse - below.sum(-1, keepdim=True)  # ties taken in index order
    return eligible & (n_reuse > 0) & (below | (ties & (ties.cumsum(-1) <= room)))


def budget_for_pair_savings(
    target: float,
    grid: Sequence[int],
    window: int = 2,
    axes: Sequence[str] = AXES,
    text_len: int = 0,
) -> float:
    """The token-mode ``budget`` that gives ``target`` pair savings when every token is eligible.

    Pair savings are ``1 - kept_q·kept_k / N²`` with ``N = Nv + text_len``; with the same budget on
    both sides ``kept = N - budget·E``, ``E`` = number of video tokens that are a non-first window
    member on some axis of ``axes``. So ``budget = N·(1 - sqrt(1 - target)) / E``. Scores that are
    non-finite make a token ineligible and lower the real savings.

    Args:
        target (`float`): pair savings in ``[0, 1)``, e.g. ``0.75`` keeps half of the tokens per side.
        grid (`tuple[int, int, int]`): ``(T, Hg, Wg)``.
        window (`int`, defaults to 2), axes (`tuple[str, ...]`), text_len (`int`, defaults to 0): as in
            ``ripple_attention``.

    Example:
        >>> from timeripple.detect import budget_for_pair_savings
        >>> round(budget_for_pair_savings(0.75, (4, 4, 4), window=2), 4)  # E = 64 - 8 = 56
        0.5714
    """
    if not 0 <= target < 1 or math.isnan(target):
        raise value_error("target", target, "pair savings must be in [0, 1)", "pass e.g. 0.75")
    check_geometry(grid, window, axes)
    n_total = math.prod(grid) + text_len
    eligible = eligible_count(grid, window, axes)
    needed = n_total * (1 - math.sqrt(1 - target))
    if needed > eligible + 1e-9:
        raise value_error(
            "target", target,
            f"at most {eligible} of {n_total} tokens per side can be reused on grid {tuple(grid)} with "
            f"window {window}, which gives {1 - ((n_total - eligible) / n_total) ** 2:.4f} pair savings",
            "lower the target, use a larger window or check more axes",
        )
    return needed / eligible if eligible else 0.0


def eligible_count(grid: Sequence[int], window: int, axes: Sequence[str]) -> int:
    """Video tokens that are a non-first window member on at least one of ``axes``:
    ``Nv - prod_{a in axes} ceil(L_a / window) * prod_{a not in axes} L_a`` (first on every checked axis)."""
    firsts = 1
    for axis, length in zip(AXES, grid):
        firsts *= math.ceil(length / window) if axis in axes else length
    return math.prod(grid) - firsts

