"""Fidelity options of the token plan (issue 9): selection scores, the query rule and a pair-savings target.

All of them keep what the GPU skips unchanged (whole query rows, whole merged key columns); they change
which tokens are picked and what a reused query's output row is:

* ``key_score="kv"``: a key is merged by the size of the error its merge makes. With the group-mean key
  (``key_repr="mean"``) the attention error of merging ``j`` into its partner ``p`` is, to leading order,
  ``s·(q·δk)·δv`` (weights that differ, times values that differ), plus ``½·s²·(q·δk)²`` times the value
  spread. So the score is ``|δk|·(|δv| + ½·|δk|·σ_v)`` with ``δ = (x_j − x_p) / 2`` (L2 over the head dim)
  and ``σ_v`` the std of the head's values. ``"delta"`` is the token criterion on ``k`` alone (today).
* ``query_repr="interp"``: a reused query's output row is the linear interpolation of the output rows of
  the two window-first tokens around it on its axis (``c − c % K`` and ``c − c % K + K``; the first alone
  at the grid's edge), selected by the interpolation residual ``rms_c(q_c − lerp)``. Copying a neighbour's
  row is first order in the query difference; the interpolation is second order along a smooth axis.
  ``"mean"``: the kept query of a group is the group's mean query (rows copied). ``"copy"``: today.
* ``pair_savings`` with ``key_share``: budgets for a target share of skipped query-key pairs, computed per
  call from the grid (scale-free: the same setting gives the same savings on every model), split so that
  ``kept_k / N = keep ** key_share`` and ``kept_q / N = keep ** (1 − key_share)``, ``keep = 1 − target``;
  ``key_share="auto"`` takes the split measured best for the target (:func:`auto_key_share`).

The tensor-level and video measurements behind the defaults are in docs/method.md ("Token-plan fidelity").
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from . import detect
from . import pairs as key_pairs
from ._validation import value_error
from .options import KEY_SCORES, QUERY_REPRS  # noqa: F401  (the option values this module implements)



def _axis_geometry(grid, axis, window, device):
    """``(prev, nxt, weight, non_first)`` for every video token on ``axis``: the window-first token at or
    before it, the next window's first token (``prev`` at the edge), the interpolation weight
    ``(c % K) / K`` (0 at the edge) and whether the token is a non-first window member."""
    T, Hg, Wg = (int(g) for g in grid)
    idx = torch.arange(T * Hg * Wg, device=device)
    coord = {"t": idx // (Hg * Wg), "y": (idx // Wg) % Hg, "x": idx % Wg}[axis]
    length = {"t": T, "y": Hg, "x": Wg}[axis]
    stride = {"t": Hg * Wg, "y": Wg, "x": 1}[axis]
    offset = coord % window
    prev = idx - offset * stride
    has_next = coord - offset + window < length
    nxt = torch.where(has_next, prev + window * stride, prev)
    weight = torch.where(has_next, offset.float() / window, torch.zeros_like(offset, dtype=torch.float32))
    return prev, nxt, weight, offset != 0


def interp_score_table(x: torch.Tensor, grid: Sequence[int], axes: Sequence[str], window: int) -> torch.Tensor:
    """Per-axis interpolation residual of the video part ``x`` ``(B, H, Nv, D)``: float32 ``(B, H, Nv, 3)``
    (axes ``t, y, x``), ``rms_c(x_c − lerp(x_prev, x_next))``; NaN for first members, unchecked axes and
    non-finite windows (the layout of ``detect.token_sources_from_scores``)."""
    xf = x.float()
    cols = []
    for axis in detect.AXES:
        if axis not in axes:
            cols.append(torch.full(x.shape[:3], math.nan, device=x.device))
            continue
        prev, nxt, w, non_first = _axis_geometry(grid, axis, window, x.device)
        lerp = xf[:, :, prev] * (1 - w)[:, None] + xf[:, :, nxt] * w[:, None]  # (B, H, Nv, D)
        score = (xf - lerp).square().mean(-1).sqrt()  # NaN propagates
        cols.append(torch.where(non_first, score, math.nan))
    return torch.stack(cols, -1)


def kv_score_table(k: torch.Tensor, v: torch.Tensor, grid: Sequence[int], axes: Sequence[str],
                   window: int) -> torch.Tensor:
    """Per-axis merge-error score of the video keys ``k``, values ``v`` ``(B, H, Nv, D)``: float32
    ``(B, H, Nv, 3)``, ``|δk|·(|δv| + ½·|δk|·σ_v)`` against the window-first partner (see the module
    docstring); NaN where a token cannot merge on that axis."""
    kf, vf = k.float(), v.float()
    sigma = vf.flatten(2).std(-1, correction=0)[..., None]  # (B, H, 1)
    cols = []
    for axis in detect.AXES:
        if axis not in axes:
            cols.append(torch.full(k.shape[:3], math.nan, device=k.device))
            continue
        prev, _, _, non_first = _axis_geometry(grid, axis, window, k.device)
        dk = ((kf - kf[:, :, prev]) * 0.5).norm(dim=-1)  # (B, H, Nv)
        dv = ((vf - vf[:, :, prev]) * 0.5).norm(dim=-1)
        score = dk * (dv + 0.5 * dk * sigma)
        cols.append(torch.where(non_first & torch.isfinite(score), score, math.nan))
    return torch.stack(cols, -1)


def group_mean_queries(q: torch.Tensor, q_src: torch.Tensor) -> torch.Tensor:
    """``q`` with every kept row replaced by the mean query of its group (the rows whose source it is);
    ``q_src`` int ``(B, H, N)``. Reused rows are left as they are (they are not computed)."""
    B, H, N, D = q.shape
    src = q_src.long()
    count = torch.zeros((B, H, N), dtype=torch.float32, device=q.device).scatter_add_(
        2, src, torch.ones((B, H, N), dtype=torch.float32, device=q.device))
    total = torch.zeros((B, H, N, D), dtype=torch.float32, device=q.device).scatter_add_(
        2, src[..., None].expand(B, H, N, D), q.float())
    kept = count > 0
    mean = total / count.clamp_min(1)[..., None]
    return torch.where(kept[..., None], mean, q.float()).to(q.dtype)


def interpolate_reused_rows(out: torch.Tensor, via: torch.Tensor, grid: Sequence[int], window: int,
                            start: int, n_axes: int) -> torch.Tensor:
    """Replace the output row of every reused video query (``via >= 0``, int8 ``(B, H, Nv)`` axis index)
    by the interpolation of the rows around it on its axis. Kept rows are exact attention outputs; a row
    it reads may itself be reused through another axis, so the update runs ``n_axes`` times (a token
    reused via axis ``a`` reads tokens that are window-first on ``a``: chains are at most ``n_axes`` long).
    """
    B, H, N, D = out.shape
    nv = via.shape[2]
    device = out.device
    prev = torch.arange(nv, device=device).expand(B, H, nv).clone()
    nxt, weight = prev.clone(), torch.zeros((B, H, nv), device=device)
    for a, axis in enumerate(detect.AXES):
        p, n, w, _ = _axis_geometry(grid, axis, window, device)
        on = via == a
        prev = torch.where(on, p, prev)
        nxt = torch.where(on, n, nxt)
        weight = torch.where(on, w, weight)
    reused = (via >= 0)[..., None]
    video = out[:, :, start : start + nv].float()  # (B, H, Nv, D)
    kept_rows = video
    w = weight[..., None]
    for _ in range(max(1, n_axes)):
        a = video.gather(2, prev[..., None].expand(B, H, nv, D))
        b = video.gather(2, nxt[..., None].expand(B, H, nv, D))
        video = torch.where(reused, a * (1 - w) + b * w, kept_rows)
    result = out.clone()
    result[:, :, start : start + nv] = video.to(out.dtype)
    return result


# (pair savings, key share) measured best on the tiny model's videos (docs/method.md "Token-plan fidelity");
# key_share="auto" interpolates linearly between them and holds the end values outside
AUTO_KEY_SHARE = ((0.5, 1.0), (0.75, 0.7), (0.875, 0.6))


def auto_key_share(target: float) -> float:
    """``key_share="auto"``: the key side's share of a ``target`` pair saving, piecewise linear through
    :data:`AUTO_KEY_SHARE` (keys only up to 50%: merging keys costs less than reusing queries there)."""
    points = AUTO_KEY_SHARE
    if target <= points[0][0]:
        return points[0][1]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if target <= x1:
            return y0 + (y1 - y0) * (target - x0) / (x1 - x0)
    return points[-1][1]


def budgets_for_pair_savings(target: float, key_share, grid: Sequence[int], axes: Sequence[str],
                             window: int, text_len: int, token_keys: str) -> tuple[float, float]:
    """``(budget, key_budget)`` for ``target`` pair savings with ``kept_k/N = keep**key_share`` and
    ``kept_q/N = keep**(1 − key_share)`` (``keep = 1 − target``), in the units of ``budget`` (share of the
    eligible queries) and ``key_budget`` (share of the eligible keys; of the possible pairs with
    ``token_keys="pairs"``). Where one side cannot reuse its share, the other side takes the rest; a
    target out of reach raises ``ValueError`` with the reachable savings."""
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 <= target < 1:
        raise value_error("pair_savings", target, "must be a number in [0, 1)", "pass e.g. pair_savings=0.75")
    if key_share == "auto":
        key_share = auto_key_share(target)
    n = math.prod(grid) + text_len
    eligible = detect.eligible_count(grid, window, axes)
    cap_k = key_pairs.pair_count(grid, axes) if token_keys == "pairs" else eligible
    keep = 1.0 - target
    reuse_k = min(n * (1 - keep**key_share), cap_k)
    reuse_q = n - keep * n * n / (n - reuse_k)
    if reuse_q > eligible:  # queries cannot take their share: the keys take more
        reuse_q = eligible
        reuse_k = n - keep * n * n / (n - reuse_q)
    if reuse_k > cap_k + 1e-9 or reuse_q > eligible + 1e-9:
        best = 1 - (n - eligible) * (n - cap_k) / n**2
        raise value_error("pair_savings", target, f"grid {tuple(grid)} with window {window} reaches at most "
                          f"{best:.4f} pair savings (token_keys={token_keys!r})",
                          "lower the target, or use token_keys='chain'")
    budget = max(reuse_q, 0.0) / eligible if eligible else 0.0
    key_budget = max(reuse_k, 0.0) / cap_k if cap_k else 0.0
    return min(budget, 1.0), min(key_budget, 1.0)


def pool_over_heads(table: torch.Tensor, budget: float) -> torch.Tensor:
    """``budget_scope="call"``: the score table with every token outside the call's ``round(budget · E)``
    smallest scores (pooled over the heads; ``E`` = eligible tokens of all heads) set to NaN, so that a
    selection with budget 1.0 reuses exactly the pooled choice: heads whose tokens are more alike reuse
    more, the call's total stays that of a per-head budget (ties at the cut may add a few)."""
    B, H, Nv, _ = table.shape
    best = table.nan_to_num(nan=math.inf).amin(-1).reshape(B, H * Nv)  # (B, H*Nv)
    eligible = torch.isfinite(best)
    n_reuse = torch.round(eligible.sum(-1, keepdim=True).double() * budget).long()  # (B, 1)
    ordered = torch.sort(best, dim=-1).values
    kth = ordered.gather(-1, (n_reuse - 1).clamp_min(0))  # (B, 1)
    keep = eligible & (n_reuse > 0) & (best <= kth)
    return torch.where(keep.view(B, H, Nv, 1), table, math.nan)


def delta_score_table(x, grid, axes, window, criterion, fraction) -> torch.Tensor:
    """The token criterion's per-axis scores ``(B, H, Nv, 3)`` (NaN where a token cannot reuse), as the
    plain-torch detection computes them, for :func:`pool_over_heads`."""
    cols = []
    for axis in detect.AXES:
        if axis in axes:
            _, non_first = detect.axis_partners(grid, axis, window, x.device)
            score = detect.token_scores(x, grid, axis, window, criterion, fraction)
            cols.append(torch.where(non_first.view(1, 1, -1), score, math.nan))
        else:
            cols.append(torch.full(x.shape[:3], math.nan, device=x.device))
    return torch.stack(cols, -1)
