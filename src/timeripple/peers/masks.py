"""Token geometry and the boolean attention masks of the sparse-attention peers.

All masks here are ``(N, N)`` bool tensors (True = the pair ``(query, key)`` is computed) over a joint
sequence of ``T*Hg*Wg`` video tokens laid out t-major and ``text_len`` text tokens before or after them.
Text rows and text columns are always kept, as in Sparse VideoGen: only video-video pairs are masked.

* **spatial** (SVG): a video query sees the keys of its own frame and of the ``r`` frames on each side;
  to make the density continuous, the frames at distance ``r + 1`` are added within ``e`` raster
  positions of the query's own position.
* **temporal** (SVG): a video query sees the keys within ``e`` raster positions of its own spatial
  position, in every frame.

:func:`spatial_params` / :func:`temporal_params` pick ``(r, e)`` / ``e`` for a target density of the
video-video pairs from closed-form pair counts, so the mask never has to be built to be sized.
"""

from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch

from .._validation import value_error

__all__ = [
    "video_span", "video_index", "window_pairs", "spatial_params", "temporal_params",
    "spatial_mask", "temporal_mask", "keep_text", "mask_rows", "spatial_pairs", "temporal_pairs",
]


def video_span(n: int, text_len: int, text_position: str) -> Tuple[int, int]:
    """``(start, nv)``: where the video tokens start in the joint sequence and how many there are."""
    start = text_len if text_position == "before" else 0
    return start, n - text_len


def video_index(grid: Sequence[int], device=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(frame, pos)`` int64 ``(Nv,)`` of every video token: its frame and its raster position in the frame."""
    T, Hg, Wg = (int(g) for g in grid)
    s = Hg * Wg
    idx = torch.arange(T * s, device=device)
    return idx // s, idx % s


def window_pairs(s: int, e: int) -> int:
    """Number of ordered pairs ``(i, j)`` of ``range(s)`` with ``|i - j| <= e``."""
    e = max(0, min(int(e), s - 1))
    return s * (2 * e + 1) - e * (e + 1)


def _frame_pairs(T: int, d: int) -> int:
    """Ordered frame pairs at distance exactly ``d``."""
    if d < 0 or d >= T:
        return 0
    return T if d == 0 else 2 * (T - d)


def spatial_params(grid: Sequence[int], density: float) -> Tuple[int, int, float]:
    """``(r, e, achieved)``: the smallest spatial mask whose video-pair density is ``>= density``."""
    T, Hg, Wg = (int(g) for g in grid)
    s = Hg * Wg
    total = (T * s) ** 2
    if not 0 < density <= 1:
        raise value_error("density", density, "must be in (0, 1]", "pass 1 - sparsity, e.g. 0.3")
    full = 0
    for r in range(T):
        full += _frame_pairs(T, r) * s * s
        ring = _frame_pairs(T, r + 1)
        if full / total >= density or ring == 0:
            return r, -1, full / total
        need = density * total - full  # pairs still missing, taken from the frames at distance r + 1
        if ring * s * s >= need:
            lo, hi = 0, s - 1  # smallest e with ring * window_pairs(s, e) >= need
            while lo < hi:
                mid = (lo + hi) // 2
                if ring * window_pairs(s, mid) >= need:
                    hi = mid
                else:
                    lo = mid + 1
            return r, lo, (full + ring * window_pairs(s, lo)) / total
    return T - 1, -1, 1.0


def temporal_params(grid: Sequence[int], density: float) -> Tuple[int, float]:
    """``(e, achieved)``: the smallest temporal window whose video-pair density is ``>= density``."""
    _, Hg, Wg = (int(g) for g in grid)
    s = Hg * Wg
    if not 0 < density <= 1:
        raise value_error("density", density, "must be in (0, 1]", "pass 1 - sparsity, e.g. 0.3")
    e = max(0, math.ceil(density * s) // 2 - 1)
    while window_pairs(s, e) < density * s * s and e < s - 1:
        e += 1
    return e, window_pairs(s, e) / (s * s)


def keep_text(video_mask: torch.Tensor, n: int, text_len: int, text_position: str) -> torch.Tensor:
    """Embed a ``(Nv, Nv)`` video mask into the ``(N, N)`` joint mask with every text row and column kept."""
    start, nv = video_span(n, text_len, text_position)
    if text_len == 0:
        return video_mask
    full = torch.ones(n, n, dtype=torch.bool, device=video_mask.device)
    full[start : start + nv, start : start + nv] = video_mask
    return full


# query rows per block of a mask's construction: its int64 (rows, Nv) temporaries stay near 2 GiB (one block
# for the tiny model; at HunyuanVideo's 67,320 video tokens a whole (Nv, Nv) int64 difference is 33.8 GiB)
_BLOCK_ELEMENTS = 2**28


def _pairwise(nv: int, device, rule) -> torch.Tensor:
    """``(Nv, Nv)`` bool from ``rule(rows)`` (``rows`` a slice of query indices -> ``(len, Nv)`` bool), built in
    blocks of rows so that the temporaries are bounded."""
    step = max(1, _BLOCK_ELEMENTS // max(nv, 1))
    if step >= nv:
        return rule(slice(0, nv))
    out = torch.empty(nv, nv, dtype=torch.bool, device=device)
    for i in range(0, nv, step):
        out[i : i + step] = rule(slice(i, i + step))
    return out


def _spatial_rule(grid, r: int, e: int, device):
    """``rule(rows) -> (len(rows), Nv)`` bool of the spatial mask's video part (``rows``: slice or index tensor)."""
    frame, pos = video_index(grid, device)

    def rule(rows):
        df = (frame[rows, None] - frame[None, :]).abs()
        video = df <= r
        if e >= 0:
            video |= (df == r + 1) & ((pos[rows, None] - pos[None, :]).abs() <= e)
        return video

    return rule, frame.numel()


def _temporal_rule(grid, e: int, device):
    _, pos = video_index(grid, device)
    return (lambda rows: (pos[rows, None] - pos[None, :]).abs() <= e), pos.numel()


def spatial_mask(grid, r: int, e: int, *, n: int, text_len: int = 0, text_position: str = "after",
                 device=None) -> torch.Tensor:
    """``(N, N)`` bool spatial mask (see the module docstring)."""
    rule, nv = _spatial_rule(grid, r, e, device)
    return keep_text(_pairwise(nv, device, rule), n, text_len, text_position)


def temporal_mask(grid, e: int, *, n: int, text_len: int = 0, text_position: str = "after",
                  device=None) -> torch.Tensor:
    """``(N, N)`` bool temporal mask (see the module docstring)."""
    rule, nv = _temporal_rule(grid, e, device)
    return keep_text(_pairwise(nv, device, rule), n, text_len, text_position)


def mask_rows(kind: str, grid, params, rows: torch.Tensor, *, n: int, text_len: int = 0,
              text_position: str = "after") -> torch.Tensor:
    """Rows ``rows`` (int64 joint-sequence query indices) of the ``(N, N)`` spatial (``params = (r, e)``) or
    temporal (``params = (e,)``) mask, as ``(len(rows), N)`` bool, without building the mask."""
    device = rows.device
    rule, nv = _spatial_rule(grid, *params, device) if kind == "spatial" else _temporal_rule(grid, *params, device)
    start, _ = video_span(n, text_len, text_position)
    video = (rows >= start) & (rows < start + nv)
    out = torch.ones(rows.numel(), n, dtype=torch.bool, device=device)  # text rows and columns: kept
    out[:, start : start + nv] = rule((rows - start).clamp(0, nv - 1)) | ~video[:, None]
    return out


def spatial_pairs(grid, r: int, e: int) -> int:
    """Video-video pairs of the spatial mask ``(r, e)``, in closed form."""
    T, Hg, Wg = (int(g) for g in grid)
    s = Hg * Wg
    full = sum(_frame_pairs(T, d) for d in range(r + 1)) * s * s
    return full + (_frame_pairs(T, r + 1) * window_pairs(s, e) if e >= 0 else 0)


def temporal_pairs(grid, e: int) -> int:
    """Video-video pairs of the temporal mask ``e``, in closed form."""
    T, Hg, Wg = (int(g) for g in grid)
    return T * T * window_pairs(Hg * Wg, e)
