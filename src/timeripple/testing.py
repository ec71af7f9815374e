"""Testing utilities: a slow, obviously-correct float64 loop specification of the whole TimeRipple
method (tests only).

Written independently of the vectorised code: explicit Python loops over tokens, axes, windows and
channels, following docs/ARCHITECTURE.md "Detection", "Token plan and token attention" and
"Statistics" line by line. Use it on small grids only (a few hundred tokens).
"""

from __future__ import annotations

import math

import torch

from .options import AXES


def _coords(grid):
    T, Hg, Wg = grid
    return [(t, y, x) for t in range(T) for y in range(Hg) for x in range(Wg)]


def _index(coord, grid):
    return coord[0] * grid[1] * grid[2] + coord[1] * grid[2] + coord[2]


def _window(coord, grid, axis, window):
    """Flat indices of the members of ``coord``'s window on ``axis`` (the first member first)."""
    a = AXES.index(axis)
    start = coord[a] - coord[a] % window
    stop = min(start + window, grid[a])
    members = []
    for p in range(start, stop):
        c = list(coord)
        c[a] = p
        members.append(_index(c, grid))
    return members


def _std(values):
    """Population std of a list of floats; NaN if any is not finite."""
    if not all(math.isfinite(v) for v in values):
        return math.nan
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def reference_deltas(x, grid, axis, window):
    """float64 ``(B, H, Nv, D)``: ``Δ`` of each element's window on ``axis``; NaN for first members
    (which never reuse) and for non-finite windows."""
    B, H, Nv, D = x.shape
    data = x.double().tolist()
    out = torch.full((B, H, Nv, D), math.nan, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            for i, coord in enumerate(_coords(grid)):
                if coord[AXES.index(axis)] % window == 0:
                    continue
                members = _window(coord, grid, axis, window)
                for c in range(D):
                    out[b, h, i, c] = _std([data[b][h][m][c] for m in members])
    return out


def _resolve(src_list, i):
    hops = 0
    while src_list[i] != i:
        i = src_list[i]
        hops += 1
        assert hops <= 3, "chain longer than 3 hops"
    return i


def _token_score(deltas, criterion, fraction):
    if any(math.isnan(d) for d in deltas):
        return math.nan
    if criterion == "strict":
        return max(deltas)
    if criterion == "rms":
        return math.sqrt(sum(d * d for d in deltas) / len(deltas))
    need = max(1, math.ceil(fraction * len(deltas) - 1e-9))  # channels that must have Δ < θ
    return sorted(deltas)[need - 1]


def reference_sources(
    x, grid, thresholds, *, window=2, priority=AXES, granularity="channel", channel_alpha=None,
    criterion="strict", fraction=0.9, budget=None,
):
    """Resolved sources of the video tensor ``x`` ``(B, H, Nv, D)``: int64 ``(B, H, Nv, D)`` for
    ``granularity="channel"``, ``(B, H, Nv)`` for ``"token"``. ``thresholds`` is ``{axis: θ}``."""
    B, H, Nv, D = x.shape
    data = x.double().tolist()
    checked = [a for a in priority if a in thresholds and (budget is not None or thresholds[a] > 0)]
    coords = _coords(grid)

    cache = {}

    def deltas(b, h, i, axis):  # Δ per channel of token i's window on axis, or None for a first member
        if coords[i][AXES.index(axis)] % window == 0:
            return None
        if (b, h, i, axis) not in cache:
            members = _window(coords[i], grid, axis, window)
            ds = [_std([data[b][h][m][c] for m in members]) for c in range(D)]
            cache[b, h, i, axis] = (ds, members[0])
        return cache[b, h, i, axis]

    if granularity == "channel":
        src = torch.zeros(B, H, Nv, D, dtype=torch.long)
        for b in range(B):
            for h in range(H):
                for c in range(D):
                    first = list(range(Nv))
                    for i in range(Nv):
                        for axis in checked:
                            found = deltas(b, h, i, axis)
                            if found is None:
                                continue
                            ds, partner = found
                            bound = thresholds[axis]
                            if channel_alpha is not None:
                                bound = channel_alpha * sum(ds) / D
                            if ds[c] < bound:  # NaN compares False
                                first[i] = partner
                                break
                    for i in range(Nv):
                        src[b, h, i, c] = _resolve(first, i)
        return src

    src = torch.zeros(B, H, Nv, dtype=torch.long)
    for b in range(B):
        for h in range(H):
            first = list(range(Nv))
            candidates = []  # (score, index, partner) for budget mode
            for i in range(Nv):
                best = None
                for axis in checked:
                    found = deltas(b, h, i, axis)
                    if found is None:
                        continue
                    score = _token_score(found[0], criterion, fraction)
                    if budget is None:
                        if score < thresholds[axis]:
                            first[i] = found[1]
                            break
                    elif math.isfinite(score) and (best is None or score < best[0]):
                        best = (score, i, found[1])
                if best is not None:
                    candidates.append(best)
            if budget is not None:
                candidates.sort(key=lambda item: (item[0], item[1]))
                for score, i, partner in candidates[: round(budget * len(candidates))]:
                    first[i] = partner
            for i in range(Nv):
                src[b, h, i] = _resolve(first, i)
    return src


def reference_attention(
    q, k, v, *, grid, threshold, text_len=0, text_position="after", attn_mask=None, mode="channel",
    window=2, axes=AXES, priority=AXES, channel_alpha=None, token_criterion="strict", token_fraction=0.9,
    budget=None, scale=None,
):
    """The whole method in float64. Returns ``(out, info)``: ``out`` float64 ``(B, H, N, Dv)``;
    ``info`` has ``q_src``/``k_src`` over the whole sequence (``(B, H, N, D)`` channel mode,
    ``(B, H, N)`` token mode), ``qk_savings`` and (token mode) ``pair_savings``, both ``(H,)``."""
    B, H, N, D = q.shape
    scale = 1 / math.sqrt(D) if scale is None else scale
    if isinstance(threshold, dict):
        thresholds = {a: float(threshold[a]) for a in axes if a in threshold}
    else:
        thresholds = {a: float(threshold) for a in axes}
    start = text_len if text_position == "before" else 0
    nv = N - text_len
    granularity = "channel" if mode == "channel" else "token"
    full = []
    for x in (q, k):
        video = x[:, :, start : start + nv]
        src = reference_sources(video, grid, thresholds, window=window, priority=priority,
                                granularity=granularity, channel_alpha=channel_alpha,
                                criterion=token_criterion, fraction=token_fraction, budget=budget)
        shape = (B, H, N, D) if mode == "channel" else (B, H, N)
        whole = torch.zeros(shape, dtype=torch.long)
        for idx in torch.cartesian_prod(*[torch.arange(s) for s in shape]).tolist():
            seq = idx[2]
            if start <= seq < start + nv:
                video_idx = list(idx)
                video_idx[2] = seq - start
                whole[tuple(idx)] = src[tuple(video_idx)] + start
            else:
                whole[tuple(idx)] = seq  # text tokens are always computed
        full.append(whole)
    q_src, k_src = full
    qd, kd, vd = q.double(), k.double(), v.double()
    mask = None if attn_mask is None else attn_mask.expand(B, H, N, N)
    out = torch.zeros(B, H, N, v.shape[-1], dtype=torch.float64)
    savings = torch.zeros(B, H, dtype=torch.float64)
    pair = torch.zeros(B, H, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            if mode == "channel":
                qt = torch.zeros(N, D, dtype=torch.float64)
                kt = torch.zeros(N, D, dtype=torch.float64)
                skipped = 0
                for c in range(D):
                    for i in range(N):
                        qt[i, c] = qd[b, h, q_src[b, h, i, c], c]
                        kt[i, c] = kd[b, h, k_src[b, h, i, c], c]
                    r_q = sum(1 for i in range(N) if q_src[b, h, i, c] != i)
                    r_k = sum(1 for j in range(N) if k_src[b, h, j, c] != j)
                    skipped += N * N - (N - r_q) * (N - r_k)
                savings[b, h] = skipped / (N * N * D)
                logits = qt @ kt.T * scale  # (N, N)
                if mask is not None:
                    m = mask[b, h]
                    logits = logits.masked_fill(~m, -math.inf) if m.dtype == torch.bool else logits + m.double()
                out[b, h] = torch.softmax(logits, dim=-1) @ vd[b, h]
                continue
            kept_k = [s for s in range(N) if k_src[b, h, s] == s]
            kept_q = [i for i in range(N) if q_src[b, h, i] == i]
            values, biases = [], []
            for s in kept_k:
                group = [j for j in range(N) if k_src[b, h, j] == s]
                values.append(sum(vd[b, h, j] for j in group) / len(group))
                bias = math.log(len(group))
                if mask is not None:
                    m = mask[b, h, 0, s]  # a key mask, per head
                    bias += (0.0 if m else -math.inf) if m.dtype == torch.bool else float(m)
                biases.append(bias)
            for i in kept_q:
                logits = [float(qd[b, h, i] @ kd[b, h, s]) * scale + bias for s, bias in zip(kept_k, biases)]
                top = max(logits)
                weights = [math.exp(lg - top) for lg in logits]
                total = sum(weights)
                out[b, h, i] = sum(w / total * val for w, val in zip(weights, values))
            for i in range(N):
                out[b, h, i] = out[b, h, int(q_src[b, h, i])]
            pair[b, h] = 1 - len(kept_q) * len(kept_k) / (N * N)
            savings[b, h] = pair[b, h]
    info = {"q_src": q_src, "k_src": k_src, "qk_savings": savings.mean(0)}
    if mode == "token":
        info["pair_savings"] = pair.mean(0)
    return out, info
