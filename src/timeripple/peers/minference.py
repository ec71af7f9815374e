"""MInference-style sparse patterns (Jiang et al., 2024), written here from the paper's description.

MInference speeds up LLM prefill with three sparse shapes of the attention map, one chosen per head:

* ``"a_shape"``: a few "sink" key columns (the first ``min(64, Nv / 32)`` tokens) plus a local band
  around the diagonal.
* ``"vertical_slash"``: the key columns and the diagonals (offsets ``i - j``) that carry the most
  attention, estimated online from the exact rows of a few sampled queries.
* ``"block_sparse"``: per block of 64 queries (``Nv / 4`` for short sequences), the key blocks with the
  largest score between the mean-pooled query and key blocks.

``pattern="auto"`` picks, per head, the pattern with the smallest output error on the sampled queries
(MInference assigns patterns per head offline; here the same criterion runs online). All patterns are
sized by one ``density`` knob (share of video-video pairs kept) and keep text rows and columns, like the
SVG-style masks. The attention is one masked SDPA: dense work with a mask, so savings are **counted**
(pairs outside the mask, net of the estimate's cost), never a wall-clock claim.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

from .._validation import value_error
from ..options import check_mask, check_tensors, check_text
from . import masks
from .stats import PeerCallStats
from .svg import combine_mask, sample_rows

__all__ = ["minference_attention", "PATTERNS"]

PATTERNS = ("a_shape", "vertical_slash", "block_sparse", "auto")
BLOCK = 64
SINKS = 64


def _embed(video_masks: torch.Tensor, n: int, text_len: int, text_position: str) -> torch.Tensor:
    """``(B, H, Nv, Nv)`` video masks -> ``(B, H, N, N)`` with text rows / columns kept."""
    if text_len == 0:
        return video_masks
    start, nv = masks.video_span(n, text_len, text_position)
    full = torch.ones(*video_masks.shape[:2], n, n, dtype=torch.bool, device=video_masks.device)
    full[:, :, start : start + nv, start : start + nv] = video_masks
    return full


def _a_shape(nv: int, density: float, device) -> torch.Tensor:
    """``(Nv, Nv)``: the first ``min(SINKS, Nv // 32)`` columns (at least 1) plus the narrowest band
    reaching ``density``."""
    sinks = max(1, min(SINKS, nv // 32))

    def kept(w):  # band pairs plus the sink columns' pairs outside the band
        extra = sum(nv - (min(nv - 1, c + w) - max(0, c - w) + 1) for c in range(sinks))
        return masks.window_pairs(nv, w) + extra

    lo, hi = 0, nv - 1
    while lo < hi:  # the narrowest band whose density reaches the target
        mid = (lo + hi) // 2
        if kept(mid) >= density * nv * nv:
            hi = mid
        else:
            lo = mid + 1
    i = torch.arange(nv, device=device)
    return ((i[:, None] - i[None, :]).abs() <= lo) | (i[None, :] < sinks)


def _vertical_slash(scores_v: torch.Tensor, rows_v: torch.Tensor, nv: int, density: float) -> torch.Tensor:
    """``(B, H, Nv, Nv)`` from the sampled rows' probabilities ``scores_v`` ``(B, H, m, Nv)``.

    Half of the pair budget ``density · Nv²`` goes to the heaviest key columns (``Nv`` pairs each), half to
    the heaviest diagonals (offsets ``i - j``, taken by mass until their lengths fill the half)."""
    B, H, m, _ = scores_v.shape
    device = scores_v.device
    if density >= 1:
        return torch.ones(B, H, nv, nv, dtype=torch.bool, device=device)
    half = density * nv * nv / 2
    n_cols = max(1, min(nv, math.ceil(half / nv)))
    cols = scores_v.sum(2).topk(n_cols, dim=-1).indices  # (B, H, n_cols)
    j = torch.arange(nv, device=device)
    offsets = rows_v[:, None] - j[None, :] + (nv - 1)  # (m, Nv) in [0, 2 Nv - 2]
    diag_mass = torch.zeros(B, H, 2 * nv - 1, device=device, dtype=scores_v.dtype)
    diag_mass.scatter_add_(2, offsets.reshape(1, 1, -1).expand(B, H, -1), scores_v.reshape(B, H, -1))
    order = diag_mass.argsort(dim=-1, descending=True)  # (B, H, 2 Nv - 1)
    lengths = (nv - (order - (nv - 1)).abs()).to(torch.float64)
    before = lengths.cumsum(-1) - lengths  # pairs of the heavier diagonals
    diag_keep = torch.zeros(B, H, 2 * nv - 1, dtype=torch.bool, device=device)
    diag_keep.scatter_(2, order, before < half)
    col_keep = torch.zeros(B, H, nv, dtype=torch.bool, device=device).scatter_(2, cols, True)
    all_offsets = (j[:, None] - j[None, :] + (nv - 1))  # (Nv, Nv)
    return col_keep[:, :, None, :] | diag_keep[:, :, all_offsets]


def _block_size(nv: int) -> int:
    """``BLOCK`` (64), or ``Nv // 4`` for short sequences so there are blocks to choose from."""
    return max(1, min(BLOCK, nv // 4))


def _block_sparse(qv: torch.Tensor, kv: torch.Tensor, density: float) -> torch.Tensor:
    """``(B, H, Nv, Nv)``: per query block, the top key blocks by pooled score."""
    B, H, nv, D = qv.shape
    size = _block_size(nv)
    nb = math.ceil(nv / size)
    pad = nb * size - nv
    blk = torch.arange(nv, device=qv.device) // size
    counts = torch.bincount(blk, minlength=nb).clamp_min(1).to(qv.dtype)

    def pool(x):
        x = F.pad(x.float(), (0, 0, 0, pad)) if pad else x.float()
        return x.view(B, H, nb, size, D).sum(3) / counts.float().view(1, 1, nb, 1)

    block_scores = pool(qv) @ pool(kv).transpose(-1, -2)  # (B, H, nb, nb)
    top = max(1, math.ceil(density * nb))
    keep_blocks = torch.zeros(B, H, nb, nb, dtype=torch.bool, device=qv.device)
    keep_blocks.scatter_(3, block_scores.topk(top, dim=-1).indices, True)
    return keep_blocks[:, :, blk][:, :, :, blk]


def minference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    grid,
    density: float,
    pattern: str = "auto",
    text_len: int = 0,
    text_position: str = "after",
    attn_mask: torch.Tensor | None = None,
    num_sampled: int = 64,
    scale: float | None = None,
    return_stats: bool = False,
):
    r"""MInference-style sparse attention with a fixed pattern family and one density knob.

    Args:
        q, k, v (`torch.Tensor`): ``(B, H, N, D)``, as for :func:`timeripple.ripple_attention`.
        grid (`tuple[int, int, int]`): ``(T, Hg, Wg)`` of the video tokens.
        density (`float`): target share of video-video pairs kept, in ``(0, 1]``; lower skips more.
        pattern (`str`, defaults to `"auto"`): one of :data:`PATTERNS`.
        text_len, text_position, attn_mask, scale: as for :func:`timeripple.peers.svg_attention`.
        num_sampled (`int`, defaults to 64): sampled queries for ``"vertical_slash"`` and ``"auto"``.
        return_stats (`bool`, defaults to `False`): also return a [`PeerCallStats`];
            ``details["patterns"]`` counts the heads per pattern.

    Returns:
        `torch.Tensor` ``(B, H, N, Dv)``, or ``(out, stats)``.

    Example:
        >>> import torch
        >>> from timeripple.peers import minference_attention
        >>> q = k = v = torch.randn(1, 2, 256, 8)
        >>> out, stats = minference_attention(q, k, v, grid=(4, 8, 8), density=0.3, pattern="a_shape",
        ...                                   return_stats=True)
        >>> stats.qk_savings_mean > 0.6
        True
    """
    check_tensors(q, k, v)
    B, H, N, D = q.shape
    grid = tuple(int(g) for g in grid)
    check_text(text_len, text_position, grid, N)
    check_mask(attn_mask, q)
    if isinstance(density, bool) or not isinstance(density, numbers.Real) or not 0 < density <= 1:
        raise value_error("density", density, "must be a number in (0, 1] (share of video pairs kept)",
                          "pass e.g. density=0.48 (MInference's 52% reduction)")
    if pattern not in PATTERNS:
        raise value_error("pattern", pattern, f"must be one of {PATTERNS}", "pass pattern='auto'")
    scale = D ** -0.5 if scale is None else float(scale)
    start, nv = masks.video_span(N, text_len, text_position)
    qv, kv = q[:, :, start : start + nv], k[:, :, start : start + nv]
    names = ["a_shape", "vertical_slash", "block_sparse"] if pattern == "auto" else [pattern]
    rows = sample_rows(N, text_len, text_position, num_sampled, q.device)
    candidates = []
    if "a_shape" in names:
        candidates.append(_a_shape(nv, density, q.device).expand(B, H, nv, nv))
    if "vertical_slash" in names:
        probs = torch.softmax(q[:, :, rows].float() @ kv.float().transpose(-1, -2) * scale, dim=-1)
        candidates.append(_vertical_slash(probs, rows - start, nv, density))
    if "block_sparse" in names:
        candidates.append(_block_sparse(qv, kv, density))
    # the estimate's cost in pairs' worth of q·kᵀ products: the sampled rows (vertical-slash, auto) and
    # the pooled block scores (block-sparse)
    overhead = (rows.numel() * N if ("vertical_slash" in names or len(names) > 1) else 0)
    overhead += math.ceil(nv / _block_size(nv)) ** 2 if "block_sparse" in names else 0
    full = [_embed(c, N, text_len, text_position) for c in candidates]  # (B, H, N, N) each
    if len(full) == 1:
        chosen, choice = full[0], torch.zeros(B, H, dtype=torch.long, device=q.device)
    else:
        choice = _choose_per_head(q, k, v, full, rows, scale, attn_mask)  # (B, H)
        chosen = torch.stack(full)[choice, torch.arange(B)[:, None], torch.arange(H)[None, :]]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=combine_mask(chosen, attn_mask, q.dtype), scale=scale)
    if not return_stats:
        return out
    kept = chosen.sum(dim=(-1, -2)).double()  # (B, H)
    savings = (1.0 - (kept + overhead) / (N * N)).mean(0).cpu()
    counts = torch.bincount(choice.reshape(-1).cpu(), minlength=len(names)).tolist()
    stats = PeerCallStats(qk_savings=savings, qk_products=B * H * N * N * D, mode="minference",
                          details={"patterns": dict(zip(names, counts)), "density": float(density)})
    return out, stats


def _choose_per_head(q, k, v, full, rows, scale, attn_mask):
    """Per head, the candidate (each ``(B, H, N, N)``) with the smallest error on the sampled rows."""
    qs = q[:, :, rows].float()
    scores = qs @ k.float().transpose(-1, -2) * scale  # (B, H, m, N)
    if attn_mask is not None:
        m = attn_mask.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])[:, :, rows]
        scores = scores.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else scores + m.float()
    vf = v.float()
    exact = torch.softmax(scores, -1) @ vf
    errors = [((torch.softmax(scores.masked_fill(~c[:, :, rows], float("-inf")), -1) @ vf) - exact)
              .pow(2).mean(dim=(-1, -2)) for c in full]
    return torch.stack(errors).argmin(0)

