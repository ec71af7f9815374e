"""The two baselines of the paper's Fig. 7, to compare against reuse at the same savings.

* :func:`magnitude_mask_attention`: zero the ``fraction`` of video token channels of ``q`` and of ``k``
  with the smallest magnitude (per head), then plain attention.
* :func:`skip_attention`: TimeRipple's own detection, but reused elements are set to 0 ("skipped")
  instead of taking their source's value.
"""

from __future__ import annotations

import numbers
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

from . import channel_mode, sequence
from ._validation import value_error
from .attention import channel_reuse
from .options import check_geometry, check_mask, check_mode_options, check_tensors, check_text, normalize_thresholds
from .ripple_stats import RippleStats


def magnitude_mask_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    fraction: float,
    grid: Sequence[int] | None = None,
    text_len: int = 0,
    text_position: str = "after",
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
    return_stats: bool = False,
):
    r"""Attention with the smallest-magnitude video channels of ``q`` and ``k`` zeroed (Fig. 7, baseline a).

    Per ``(batch, head)`` and per side, the ``round(fraction · Nv · D)`` video elements with the
    smallest ``|value|`` are set to 0; text tokens are kept. Then plain SDPA.

    Args:
        q, k, v (`torch.Tensor`): ``(B, H, N, D)``, as for :func:`timeripple.ripple_attention`.
        fraction (`float`): share of video elements zeroed per side, in ``[0, 1]`` (the paper's ``θ*``).
            Higher zeroes more (more "savings", more error); ``0`` is plain SDPA.
        grid (`tuple[int, int, int]`, *optional*): only checked against ``N - text_len`` when given.
        text_len (`int`, defaults to 0), text_position (`str`, defaults to `"after"`), attn_mask,
            scale, return_stats: as for :func:`timeripple.ripple_attention`.

    Returns:
        `torch.Tensor` ``(B, H, N, Dv)``, or ``(out, stats)``; ``stats.mode == "magnitude"`` and the
        reused fractions hold one key, ``"magnitude"``.

    Example:
        >>> import torch
        >>> from timeripple import baselines
        >>> q = k = v = torch.randn(1, 2, 16, 8)
        >>> out, stats = baselines.magnitude_mask_attention(q, k, v, fraction=0.5, return_stats=True)
        >>> stats.reused_fraction_q["magnitude"]
        0.5
    """
    check_tensors(q, k, v)
    B, H, N, D = q.shape
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0 <= fraction <= 1:
        raise value_error("fraction", fraction, "must be a number in [0, 1]", "pass e.g. fraction=0.5")
    if grid is not None:
        check_geometry(grid, 2, ("t",))
        check_text(text_len, text_position, tuple(grid), N)
    else:
        if not isinstance(text_len, int) or isinstance(text_len, bool) or not 0 <= text_len <= N:
            raise value_error("text_len", text_len, f"must be an int in [0, N={N}]", "pass the number of text tokens")
        check_text(text_len, text_position, (N - text_len, 1, 1), N)
    check_mask(attn_mask, q)
    masked, zeroed = [], []
    for x in (q, k):
        video, start = sequence.split_video(x, text_len, text_position)  # (B, H, Nv, D)
        nv = video.shape[2]
        n_zero = round(fraction * nv * D)
        flat = video.float().abs().reshape(B, H, nv * D)  # (B, H, Nv*D)
        drop = torch.zeros_like(flat, dtype=torch.bool)
        if n_zero:
            drop.scatter_(-1, flat.topk(n_zero, dim=-1, largest=False).indices, True)
        drop = drop.view(B, H, nv, D)  # (B, H, Nv, D)
        x_m = x.clone()
        x_m[:, :, start : start + nv] = video.masked_fill(drop, 0)
        masked.append(x_m)
        zeroed.append(drop)
    out = F.scaled_dot_product_attention(masked[0], masked[1], v, attn_mask=attn_mask, scale=scale)
    if not return_stats:
        return out
    r_q, r_k = (z.sum(dim=2).double() for z in zeroed)  # (B, H, D)
    skipped = N * N - (N - r_q) * (N - r_k)  # (B, H, D)
    total = max(zeroed[0][0, 0].numel(), 1)
    stats = RippleStats(
        qk_savings=(skipped.sum(-1) / (N * N * D)).mean(0).cpu(),
        reused_fraction_q={"magnitude": round(fraction * total) / total},
        reused_fraction_k={"magnitude": round(fraction * total) / total},
        qk_products=B * H * N * N * D,
        mode="magnitude",
        threshold=fraction,
    )
    return out, stats


def skip_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    grid: Sequence[int],
    threshold: float | Mapping[str, float] | None,
    text_len: int = 0,
    text_position: str = "after",
    attn_mask: torch.Tensor | None = None,
    window: int = 2,
    axes: Sequence[str] = ("t", "y", "x"),
    priority: Sequence[str] = ("t", "y", "x"),
    channel_alpha: float | None = None,
    scale: float | None = None,
    return_stats: bool = False,
):
    r"""TimeRipple's channel detection, but reused elements are zeroed instead of reused (Fig. 7, baseline b).

    Arguments are those of :func:`timeripple.ripple_attention` in channel mode; the skipped elements
    (and so ``qk_savings``) are exactly those that ``ripple_attention`` would reuse.

    Returns:
        `torch.Tensor` ``(B, H, N, Dv)``, or ``(out, stats)`` with ``stats.mode == "skip"``.

    Example:
        >>> import torch
        >>> from timeripple import baselines
        >>> q = k = v = torch.randn(1, 2, 8, 16)
        >>> out, stats = baselines.skip_attention(q, k, v, grid=(2, 2, 2), threshold=1e9, return_stats=True)
        >>> round(stats.qk_savings_mean, 4)
        0.9844
    """
    check_tensors(q, k, v)
    B, H, N, D = q.shape
    check_geometry(grid, window, axes, priority)
    grid = tuple(int(g) for g in grid)
    check_text(text_len, text_position, grid, N)
    check_mode_options("channel", channel_alpha=channel_alpha, scale=scale)
    check_mask(attn_mask, q)
    thresholds = {} if threshold is None else normalize_thresholds(threshold, axes)
    if all(theta == 0 for theta in thresholds.values()):
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)
        return (out, RippleStats.dense(q.shape, axes, threshold, "skip")) if return_stats else out
    q_z, k_z, src_q, src_k, via_q, via_k = channel_reuse(
        q, k, grid=grid, thresholds=thresholds, text_len=text_len, text_position=text_position,
        window=window, priority=priority, channel_alpha=channel_alpha, fill=0.0,
    )
    out = F.scaled_dot_product_attention(q_z, k_z, v, attn_mask=attn_mask, scale=scale)
    if not return_stats:
        return out
    stats = RippleStats(
        qk_savings=channel_mode.channel_qk_savings(src_q, src_k, N, N),
        reused_fraction_q=channel_mode.reused_fractions(via_q, axes),
        reused_fraction_k=channel_mode.reused_fractions(via_k, axes),
        qk_products=B * H * N * N * D,
        mode="skip",
        threshold=threshold,
    )
    return out, stats
