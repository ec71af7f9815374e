"""Fidelity metrics between two videos: PSNR and SSIM.

Both take videos shaped ``(F, C, H, W)`` (or a batch ``(B, F, C, H, W)``, which is scored as one long
video) and a ``value_range``: ``(0, 1)`` (the default; pipeline output ``"pt"``) or ``(-1, 1)`` (raw
samples / procedural clips). Values are mapped to ``[0, 1]`` first, so the figures do not depend on the
range. Computed in float64 on the CPU or the inputs' device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._validation import value_error


def _prepare(a, b, value_range) -> tuple[torch.Tensor, torch.Tensor]:
    a = torch.as_tensor(a)
    b = torch.as_tensor(b).to(a.device)
    if a.shape != b.shape:
        raise value_error("b", tuple(b.shape), f"must have the shape of `a` {tuple(a.shape)}", "compare equal videos")
    if a.ndim not in (4, 5):
        raise value_error(
            "a", tuple(a.shape), "must be a video (F, C, H, W) or a batch (B, F, C, H, W)",
            "pass pipeline frames with output_type='pt'",
        )
    lo, hi = value_range
    if not hi > lo:
        raise value_error("value_range", value_range, "needs low < high", "use (0, 1) or (-1, 1)")
    a = (a.to(torch.float64) - lo) / (hi - lo)
    b = (b.to(torch.float64) - lo) / (hi - lo)
    return a.reshape(-1, *a.shape[-3:]), b.reshape(-1, *b.shape[-3:])  # (F, C, H, W)


def psnr(a, b, *, value_range: tuple[float, float] = (0.0, 1.0)) -> float:
    """Peak signal-to-noise ratio in dB over the whole video: ``10 log10(1 / MSE)`` on ``[0, 1]`` values.

    Returns ``inf`` for identical videos. Higher is closer; 30-40 dB is visually near-identical.

    Example:

    ```py
    >>> import torch
    >>> from timeripple.video_metrics import psnr
    >>> a = torch.zeros(9, 3, 32, 32)
    >>> round(psnr(a, a + 0.1), 2)
    20.0
    ```
    """
    a, b = _prepare(a, b, value_range)
    mse = float(((a - b) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def _gaussian_window(size: int, sigma: float, channels: int, device) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()  # (C, 1, k, k)


def ssim(
    a, b, *, value_range: tuple[float, float] = (0.0, 1.0), window_size: int = 11, sigma: float = 1.5
) -> float:
    """Structural similarity (Wang et al. 2004) per frame and channel, averaged over the video.

    Gaussian window (``window_size`` x ``window_size``, std ``sigma``), ``K1 = 0.01``, ``K2 = 0.03``,
    data range 1, "valid" filtering (no padding), as in the reference implementation. The window
    shrinks to the frame size for frames smaller than it. 1 = identical.

    Example:

    ```py
    >>> import torch
    >>> from timeripple.video_metrics import ssim
    >>> a = torch.rand(9, 3, 32, 32)
    >>> ssim(a, a)
    1.0
    ```
    """
    a, b = _prepare(a, b, value_range)
    channels = a.shape[1]
    size = min(window_size, a.shape[-1], a.shape[-2])
    w = _gaussian_window(size, sigma, channels, a.device)
    c1, c2 = 0.01**2, 0.03**2

    def blur(x):
        return F.conv2d(x, w, groups=channels)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return round(float(s.mean()), 12)
