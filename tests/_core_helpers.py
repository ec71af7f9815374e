"""Input builders shared by the core tests (detection, attention, token mode, baselines)."""

import math

import torch

from timeripple.detect import axis_partners, token_scores, window_deltas


def structured(B, H, grid, D, *, noise=0.1, seed=0, dtype=torch.float32):
    """``(B, H, Nv, D)`` smooth in t/y/x plus Gaussian noise, so thresholds give partial reuse."""
    g = torch.Generator().manual_seed(seed)
    T, Hg, Wg = grid
    t = torch.arange(T).view(T, 1, 1, 1).float()
    y = torch.arange(Hg).view(1, Hg, 1, 1).float()
    x = torch.arange(Wg).view(1, 1, Wg, 1).float()
    out = []
    for _ in range(B * H):
        freq = torch.rand(3, 1, 1, 1, D, generator=g) * 0.6
        phase = torch.rand(D, generator=g) * 6.28
        smooth = torch.sin(freq[0] * t + freq[1] * y + freq[2] * x + phase)  # (T, Hg, Wg, D)
        out.append(smooth + noise * torch.randn(T, Hg, Wg, D, generator=g))
    return torch.stack(out).reshape(B, H, T * Hg * Wg, D).to(dtype)


def with_text(video, text_len, text_position, seed=1):
    """Add ``text_len`` random text tokens before or after the video tokens along dim 2."""
    if not text_len:
        return video
    g = torch.Generator().manual_seed(seed)
    B, H, _, D = video.shape
    text = torch.randn(B, H, text_len, D, generator=g).to(video.dtype)
    return torch.cat([text, video] if text_position == "before" else [video, text], dim=2)


def _midpoint(values, quantile, min_gap=1e-4):
    """A threshold between two distinct sorted values near ``quantile``, at least ``min_gap`` from both,
    so float32 and float64 comparisons agree."""
    v = torch.unique(values[torch.isfinite(values)].double())  # sorted
    assert v.numel() >= 2
    start = min(int(quantile * (v.numel() - 1)), v.numel() - 2)
    for i in list(range(start, v.numel() - 1)) + list(range(start - 1, -1, -1)):
        if v[i + 1] - v[i] > 2 * min_gap:
            return float((v[i] + v[i + 1]) / 2)
    raise AssertionError("no usable threshold gap")


def pick_threshold(tensors, grid, axis, window, quantile=0.5, *, criterion=None, fraction=0.9):
    """A robust threshold for ``axis`` that lets about ``quantile`` of the non-first members pass.
    ``criterion`` None: element Δ (channel mode); else the token score of that criterion."""
    values = []
    for x in tensors:
        _, non_first = axis_partners(grid, axis, window)
        if criterion is None:
            values.append(window_deltas(x, grid, axis, window)[:, :, non_first].flatten())
        else:
            values.append(token_scores(x, grid, axis, window, criterion, fraction)[:, :, non_first].flatten())
    return _midpoint(torch.cat(values), quantile)


def pick_alpha(tensors, grid, axes, window, quantile=0.5):
    """A robust ``channel_alpha``: a midpoint of the ratios ``Δ_c / mean_c Δ``."""
    ratios = []
    for x in tensors:
        for axis in axes:
            _, non_first = axis_partners(grid, axis, window)
            d = window_deltas(x, grid, axis, window)[:, :, non_first].double()
            ratios.append((d / d.mean(-1, keepdim=True)).flatten())
    return _midpoint(torch.cat(ratios), quantile, min_gap=1e-3)


def video_slice(x, text_len, text_position):
    n = x.shape[2]
    start = text_len if text_position == "before" else 0
    return x[:, :, start : start + n - text_len]


def firsts_on_all_axes(grid, window, axes):
    """Closed form: tokens that are the first member of their window on every checked axis."""
    out = 1
    for axis, length in zip(("t", "y", "x"), grid):
        out *= math.ceil(length / window) if axis in axes else length
    return out
