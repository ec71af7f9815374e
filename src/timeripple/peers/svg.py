"""A Sparse-VideoGen-style attention (Xi et al., 2025), written here from the paper's description.

Per attention head, the head is classified online as *spatial* (it attends within its frame and the
frames around it) or *temporal* (it attends to the same spatial position across frames): a few video
queries are sampled, their exact attention rows are computed, and each candidate mask's output on those
queries is compared with the exact output; the mask with the smaller mean squared error wins. Text rows
and columns are always computed. The masks and their sizes are in :mod:`timeripple.peers.masks`.

Two backends compute the same thing:

* ``"sdpa"``: one ``scaled_dot_product_attention`` with a ``(B, H, N, N)`` bool mask (any device; the
  reference, and what the CPU runs). It is dense work with a mask: no wall-clock gain.
* ``"flex"``: FlexAttention with a block mask (CUDA; on the CPU only in eager mode, for tests). Temporal
  heads get SVG's layout transform: their tokens are permuted position-major, so the temporal mask
  becomes a band of contiguous blocks that the kernel skips. The per-geometry block masks are built once
  and combined per call with the head choice.

Savings are **counted**: the video-video pairs outside the chosen mask, net of the profiling cost
(``num_sampled`` full rows), as a fraction of the ``N²`` pairs (each pair is ``D`` products of ``q kᵀ``).
"""

from __future__ import annotations

import functools
import logging
import numbers

import torch
import torch.nn.functional as F

from .._validation import value_error
from ..options import check_mask, check_tensors, check_text
from . import masks
from .stats import PeerCallStats

logger = logging.getLogger(__name__)

__all__ = ["svg_attention", "svg_choose_heads", "svg_plan", "svg_run", "SVGPlan", "BACKENDS"]

BACKENDS = ("auto", "sdpa", "flex")


def check_sparsity(sparsity) -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real) or not 0 <= sparsity < 1:
        raise value_error("sparsity", sparsity, "must be a number in [0, 1) (the share of video pairs skipped)",
                          "pass e.g. sparsity=0.7 (SVG 70%)")
    return float(sparsity)


def sample_rows(n: int, text_len: int, text_position: str, num_sampled: int, device) -> torch.Tensor:
    """Evenly spaced video query indices (deterministic, so runs repeat exactly)."""
    start, nv = masks.video_span(n, text_len, text_position)
    m = max(1, min(int(num_sampled), nv))
    return start + torch.linspace(0, nv - 1, m, device=device).round().long().unique()


def _masked_probs(scores: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    return torch.softmax(scores.masked_fill(~keep, float("-inf")), dim=-1)


def svg_choose_heads(q, k, v, candidates, *, rows, scale, attn_mask=None, sampled=False) -> torch.Tensor:
    """Index ``(B, H)`` of the candidate mask with the smallest output MSE on the sampled ``rows``.

    Args:
        candidates (`list[torch.Tensor]`): ``(N, N)`` bool masks, or (``sampled=True``) only their ``rows``,
            ``(len(rows), N)``.
        rows (`torch.Tensor`): int64 query indices whose exact attention rows are computed.
    """
    qs = q[:, :, rows].float()  # (B, H, m, D)
    scores = qs @ k.float().transpose(-1, -2) * scale  # (B, H, m, N)
    if attn_mask is not None:
        m = attn_mask.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])[:, :, rows]  # (B, H, m, N)
        scores = scores.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else scores + m.float()
    vf = v.float()
    exact = torch.softmax(scores, dim=-1) @ vf  # (B, H, m, Dv)
    errors = []
    for keep in candidates:
        approx = _masked_probs(scores, keep if sampled else keep[rows]) @ vf
        errors.append((approx - exact).pow(2).mean(dim=(-1, -2)))  # (B, H)
    return torch.stack(errors).argmin(dim=0)  # (B, H)


def _key_mask(attn_mask, B: int, N: int):
    """``(B, N)`` bool key mask when ``attn_mask`` is a bool key-padding mask (``(B, 1, 1, N)``-like), else None."""
    if attn_mask is None or attn_mask.dtype != torch.bool or attn_mask.dim() > 4:
        return None
    m = attn_mask.view((1,) * (4 - attn_mask.dim()) + tuple(attn_mask.shape))
    if m.shape[1] != 1 or m.shape[2] != 1:
        return None
    return m[:, 0, 0].expand(B, N)


def combine_mask(head_masks: torch.Tensor, attn_mask, dtype):
    if attn_mask is None:
        return head_masks
    if attn_mask.dtype == torch.bool:
        return head_masks & attn_mask
    return attn_mask.to(dtype).masked_fill(~head_masks, float("-inf"))


def svg_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    grid,
    sparsity: float,
    text_len: int = 0,
    text_position: str = "after",
    attn_mask: torch.Tensor | None = None,
    num_sampled: int = 64,
    scale: float | None = None,
    backend: str = "auto",
    return_stats: bool = False,
):
    r"""Sparse-VideoGen-style attention: per head, a spatial or a temporal mask chosen online.

    Args:
        q, k, v (`torch.Tensor`): ``(B, H, N, D)``, as for :func:`timeripple.ripple_attention`.
        grid (`tuple[int, int, int]`): latent grid ``(T, Hg, Wg)`` of the video tokens.
        sparsity (`float`): target share of video-video pairs skipped, in ``[0, 1)``; both masks are sized
            to keep at least ``1 - sparsity`` of them (the achieved share is in the stats). Higher skips more.
        text_len (`int`, defaults to 0), text_position (`str`, defaults to `"after"`): the text tokens,
            never masked.
        attn_mask (`torch.Tensor`, *optional*): bool or additive mask broadcastable to ``(B, H, N, N)``;
            combined with the sparse mask (``"sdpa"`` backend only).
        num_sampled (`int`, defaults to 64): video queries whose exact rows decide each head's mask (their
            cost is counted against the savings).
        scale (`float`, *optional*): softmax scale, default ``1/sqrt(D)``.
        backend (`str`, defaults to `"auto"`): ``"sdpa"``, ``"flex"`` or ``"auto"`` (flex on CUDA when there
            is no ``attn_mask``, else sdpa).
        return_stats (`bool`, defaults to `False`): also return a [`PeerCallStats`].

    Returns:
        `torch.Tensor` ``(B, H, N, Dv)``, or ``(out, stats)``; ``stats.details["temporal_heads"]`` is the
        share of heads that chose the temporal mask.

    Example:
        >>> import torch
        >>> from timeripple.peers import svg_attention
        >>> q = k = v = torch.randn(1, 2, 4 * 16, 8)
        >>> out, stats = svg_attention(q, k, v, grid=(4, 4, 4), sparsity=0.5, return_stats=True)
        >>> out.shape, stats.qk_savings_mean > 0.3
        (torch.Size([1, 2, 64, 8]), True)
    """
    check_tensors(q, k, v)
    B, H, N, D = q.shape
    grid = tuple(int(g) for g in grid)
    check_text(text_len, text_position, grid, N)
    check_mask(attn_mask, q)
    check_sparsity(sparsity)
    if backend not in BACKENDS:
        raise value_error("backend", backend, f"must be one of {BACKENDS}", "pass backend='auto'")
    if backend == "flex" and _key_mask(attn_mask, B, N) is None and attn_mask is not None:
        raise value_error("backend", backend, "the flex path takes only a bool key mask broadcastable to "
                          "(B, 1, 1, N) as attn_mask", "use backend='sdpa'")
    scale = D ** -0.5 if scale is None else float(scale)
    plan = svg_plan(q, k, v, grid=grid, sparsity=sparsity, text_len=text_len, text_position=text_position,
                    attn_mask=attn_mask, num_sampled=num_sampled, scale=scale)
    out, used = svg_run(q, k, v, plan, attn_mask=attn_mask, scale=scale, backend=backend)
    if not return_stats:
        return out
    kept = plan.kept_pairs()  # (B, H)
    savings = (1.0 - (kept + plan.rows.numel() * N) / (N * N)).mean(0).cpu()  # (H,)
    stats = PeerCallStats(qk_savings=savings, qk_products=B * H * N * N * D, mode="svg",
                          details={**plan.details(), "backend": used})
    return out, stats


class SVGPlan:
    """The per-call decision of :func:`svg_attention`: both masks' parameters and sizes, each head's choice.

    The ``(N, N)`` masks themselves (``m_s``, ``m_t``) are built only when read (the masked-SDPA path and the
    counting of ``ripple_svg``): choosing the heads needs only the sampled rows, and the FlexAttention path its
    block masks (at HunyuanVideo's 67,560 tokens the two masks are 9.1 GB of bool, rebuilt every call before)."""

    def __init__(self, grid, n, text_len, text_position, r, e_s, e_t, rows, choice):
        self.grid, self.n, self.text_len, self.text_position = grid, n, text_len, text_position
        self.r, self.e_s, self.e_t = r, e_s, e_t
        self.rows, self.choice = rows, choice  # choice: (B, H) True = temporal
        nv = n - text_len
        text_pairs = n * n - nv * nv  # every text row and column is kept
        self.pairs_s = masks.spatial_pairs(grid, r, e_s) + text_pairs
        self.pairs_t = masks.temporal_pairs(grid, e_t) + text_pairs
        self._masks = {}

    def _geo(self):
        return dict(n=self.n, text_len=self.text_len, text_position=self.text_position, device=self.rows.device)

    @property
    def m_s(self) -> torch.Tensor:
        """``(N, N)`` bool spatial mask (built on first use)."""
        if "s" not in self._masks:
            self._masks["s"] = masks.spatial_mask(self.grid, self.r, self.e_s, **self._geo())
        return self._masks["s"]

    @property
    def m_t(self) -> torch.Tensor:
        """``(N, N)`` bool temporal mask (built on first use)."""
        if "t" not in self._masks:
            self._masks["t"] = masks.temporal_mask(self.grid, self.e_t, **self._geo())
        return self._masks["t"]

    def head_masks(self) -> torch.Tensor:
        """``(B, H, N, N)`` bool: each head's chosen mask."""
        return torch.where(self.choice[:, :, None, None], self.m_t, self.m_s)

    def kept_pairs(self) -> torch.Tensor:
        """``(B, H)`` float64: pairs each head computes (closed-form counts of its mask)."""
        return torch.where(self.choice, float(self.pairs_t), float(self.pairs_s)).double()

    def details(self) -> dict:
        return {"temporal_heads": float(self.choice.double().mean()), "spatial_r": self.r, "spatial_e": self.e_s,
                "temporal_e": self.e_t, "sampled": int(self.rows.numel())}


def svg_plan(q, k, v, *, grid, sparsity, text_len, text_position, attn_mask, num_sampled, scale) -> SVGPlan:
    """Size both masks for ``1 - sparsity`` and choose each head's mask from the sampled queries (only the
    sampled rows of the masks are built)."""
    B, H, N, D = q.shape
    density = 1.0 - check_sparsity(sparsity)
    r, e_s, _ = masks.spatial_params(grid, density)
    e_t, _ = masks.temporal_params(grid, density)
    rows = sample_rows(N, text_len, text_position, num_sampled, q.device)
    geo = dict(n=N, text_len=text_len, text_position=text_position)
    candidates = [masks.mask_rows("spatial", grid, (r, e_s), rows, **geo),
                  masks.mask_rows("temporal", grid, (e_t,), rows, **geo)]
    choice = svg_choose_heads(q, k, v, candidates, rows=rows, scale=scale, attn_mask=attn_mask,
                              sampled=True) == 1  # (B, H)
    return SVGPlan(tuple(grid), N, text_len, text_position, r, e_s, e_t, rows, choice)


def svg_run(q, k, v, plan: SVGPlan, *, attn_mask=None, scale, backend="auto"):
    """Attention under ``plan``: ``(out, backend used)``."""
    key_keep = _key_mask(attn_mask, q.shape[0], q.shape[2])
    flexible = attn_mask is None or key_keep is not None
    use_flex = backend == "flex" or (backend == "auto" and q.is_cuda and flexible)
    if use_flex:
        out = _flex_svg(q, k, v, plan.choice, plan.grid, plan.r, plan.e_s, plan.e_t, plan.text_len,
                        plan.text_position, scale, key_keep)
        return out, "flex"
    mask = combine_mask(plan.head_masks(), attn_mask, q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale), "sdpa"


# ----------------------------------------------------------------------------------------------
# FlexAttention path


@functools.lru_cache(maxsize=None)
def _flex_fn(compiled: bool):
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False) if compiled else flex_attention


def _position_major(grid, n, text_len, text_position, device) -> torch.Tensor:
    """``(N,)`` gather index that reorders the video tokens position-major (SVG's layout transform)."""
    T, Hg, Wg = grid
    start, nv = masks.video_span(n, text_len, text_position)
    order = torch.arange(nv, device=device).view(T, Hg * Wg).t().reshape(-1) + start
    idx = torch.arange(n, device=device)
    idx[start : start + nv] = order
    return idx


def _mods(grid, n, text_len, text_position, params):
    """The spatial (natural order), temporal (position-major) and chosen mask_mods. ``params`` holds
    ``(r, e_s, e_t)``: Python ints for building block masks, or a tensor read at run time (so one compiled
    kernel serves every sparsity instead of one compile per value)."""
    T, Hg, Wg = grid
    s = Hg * Wg
    start, nv = masks.video_span(n, text_len, text_position)

    def is_text(i):
        return (i < start) | (i >= start + nv)

    def spatial_mod(b, h, qi, ki):
        r, e_s = params[0], params[1]
        fq, fk = (qi - start) // s, (ki - start) // s
        pq, pk = (qi - start) % s, (ki - start) % s
        df = (fq - fk).abs()
        video = (df <= r) | ((df == r + 1) & ((pq - pk).abs() <= e_s))
        return is_text(qi) | is_text(ki) | video

    def temporal_mod(b, h, qi, ki):  # in position-major order: token j is (pos j // T, frame j % T)
        pq, pk = (qi - start) // T, (ki - start) // T
        return is_text(qi) | is_text(ki) | ((pq - pk).abs() <= params[2])

    return spatial_mod, temporal_mod


FLEX_BLOCK = 128  # FlexAttention's default sparse block size


def block_mask_by_rows(mask_mod, n: int, device, block: int = FLEX_BLOCK):
    """The FlexAttention ``BlockMask`` of ``mask_mod`` over ``n`` x ``n``, evaluated one block of query rows at a
    time: ``create_block_mask`` evaluates the whole ``(n, n)`` grid at once, whose int64 temporaries are
    36 GB each at HunyuanVideo's 67,576 tokens. A key block is full when every pair in it is kept (never a
    block cut by the end of the sequence), partial when some are; the kernel applies ``mask_mod`` in partial
    blocks only."""
    from torch.nn.attention.flex_attention import BlockMask

    nb = -(-n // block)
    ki = torch.arange(n, device=device)[None, :]
    partial = torch.zeros(nb, nb, dtype=torch.bool, device=device)
    full = torch.zeros(nb, nb, dtype=torch.bool, device=device)
    for i in range(nb):
        qi = torch.arange(i * block, min(n, (i + 1) * block), device=device)[:, None]
        m = torch.nn.functional.pad(mask_mod(None, None, qi, ki), (0, nb * block - n))  # (rows, nb*block)
        blocks = m.view(qi.shape[0], nb, block)
        some = blocks.any(2).any(0)
        every = blocks.all(2).all(0) & (qi.shape[0] == block)
        every[-1] &= n % block == 0
        full[i], partial[i] = every, some & ~every

    def ordered(b):  # (nb, nb) -> counts (1, 1, nb), indices (1, 1, nb, nb): the kept blocks first, ascending
        return (b.sum(-1, dtype=torch.int32)[None, None],
                torch.argsort((~b).to(torch.int8), dim=-1, stable=True).to(torch.int32)[None, None])

    return BlockMask.from_kv_blocks(*ordered(partial), *ordered(full), BLOCK_SIZE=block, mask_mod=mask_mod,
                                    seq_lengths=(n, n))


@functools.lru_cache(maxsize=16)
def _flex_blocks(grid, n, text_len, text_position, r, e_s, e_t, device_str):
    """The spatial and temporal block masks of one geometry and sparsity (built once, by blocks of rows)."""
    spatial_mod, temporal_mod = _mods(grid, n, text_len, text_position, (r, e_s, e_t))
    device = torch.device(device_str)
    return block_mask_by_rows(spatial_mod, n, device), block_mask_by_rows(temporal_mod, n, device)


@functools.lru_cache(maxsize=16)
def _flex_state(grid, n, text_len, text_position, device_str, B, H):
    """Per geometry: the buffers the chosen mask_mod reads (head choice, key mask, sizes) and the mask_mod."""
    device = torch.device(device_str)
    choice_buf = torch.zeros(B, H, dtype=torch.bool, device=device)
    key_buf = torch.ones(B, n, dtype=torch.bool, device=device)
    params = torch.zeros(3, dtype=torch.long, device=device)
    spatial_mod, temporal_mod = _mods(grid, n, text_len, text_position, params)

    def chosen_mod(b, h, qi, ki):
        return torch.where(choice_buf[b, h], temporal_mod(b, h, qi, ki), spatial_mod(b, h, qi, ki)) & key_buf[b, ki]

    return choice_buf, key_buf, params, chosen_mod


def _partial_only(bm):
    """``(kv_num_blocks, kv_indices)`` with the full blocks folded into the partial ones, so the mask_mod
    (which carries the key mask) is evaluated everywhere."""
    dense = bm.to_dense().bool()  # (1, 1, Qb, KVb)
    return dense.sum(-1, dtype=torch.int32), dense.int().argsort(dim=-1, descending=True, stable=True).to(torch.int32)


def _flex_svg(q, k, v, choice, grid, r, e_s, e_t, text_len, text_position, scale, key_keep=None):
    from torch.nn.attention.flex_attention import BlockMask

    B, H, N, _ = q.shape
    bm_s, bm_t = _flex_blocks(grid, N, text_len, text_position, r, e_s, e_t, str(q.device))
    choice_buf, key_buf, params, chosen_mod = _flex_state(grid, N, text_len, text_position, str(q.device), B, H)
    choice_buf.copy_(choice)
    params.copy_(torch.tensor([r, e_s, e_t]))
    if key_keep is None:
        key_buf.fill_(True)
    else:
        key_buf.copy_(key_keep)
    sel = choice[:, :, None]  # (B, H, 1)

    def pick(a, b):
        if a is None:
            return None
        shape = (B, H) + tuple(a.shape[2:])
        sel_x = sel.view(B, H, *([1] * (a.dim() - 2)))
        return torch.where(sel_x, b.expand(shape), a.expand(shape)).contiguous()

    if key_keep is None:
        blocks = (pick(bm_s.kv_num_blocks, bm_t.kv_num_blocks), pick(bm_s.kv_indices, bm_t.kv_indices),
                  pick(bm_s.full_kv_num_blocks, bm_t.full_kv_num_blocks),
                  pick(bm_s.full_kv_indices, bm_t.full_kv_indices))
    else:  # a key mask: no block may skip the mask_mod
        (ns, is_), (nt, it) = _partial_only(bm_s), _partial_only(bm_t)
        blocks = (pick(ns, nt), pick(is_, it), None, None)
    block_mask = BlockMask.from_kv_blocks(*blocks, BLOCK_SIZE=bm_s.BLOCK_SIZE, mask_mod=chosen_mod, seq_lengths=(N, N))
    perm = _position_major(grid, N, text_len, text_position, q.device)
    idx = torch.where(sel, perm, torch.arange(N, device=q.device))  # (B, H, N)

    def gather(x):
        return x.gather(2, idx[..., None].expand(-1, -1, -1, x.shape[-1]))

    out = _flex_fn(q.is_cuda)(gather(q), gather(k), gather(v), block_mask=block_mask, scale=scale)
    return torch.empty_like(out).scatter_(2, idx[..., None].expand(-1, -1, -1, out.shape[-1]), out)
