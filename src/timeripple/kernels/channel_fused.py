"""Fused channel-mode detection + reuse: ``q̃`` (or ``k̃``) and its reuse counts in one kernel.

With windows starting at multiples of ``K`` on every axis, everything that decides an element's
resolved source lies inside its ``K×K×K`` *cube* (window along t × window along y × window along x,
clipped at the grid edges): the line of ``K`` values through the element along each axis gives its
``Δ`` on that axis, its source on an axis is the line's first member (inside the cube), and a chain
hop clears one cube coordinate, so chains stay inside the cube too (docs/ARCHITECTURE.md "Detection").

``_channel_reuse_kernel`` therefore loads a block of whole cubes of one ``(b, h)`` as a 5-D tile
``(BLOCK_C cubes, KP, KP, KP, D)`` (``KP`` = the window rounded up to a power of two; padded and
out-of-grid members are masked), computes the line ``Δ`` per axis in float32 (``K = 2``:
``|a0 - a1| / 2``; else the two-pass population std), decides the passes (``Δ < θ_a``, non-first,
window of size >= 2, every member finite), takes the first passing axis in ``priority`` order
(``via``), resolves chains with ``len(axes)`` broadcast hops (``val = val[first member on via]``), writes
the video rows of ``x̃`` and, optionally, per-``(b, h, channel)`` counts: reused elements and reused
elements per axis (``counts[b, h, 0 | 1 + axis, c]``, int32, accumulated with atomics).

Public pieces:

* ``channel_reuse_fused(q, k, ...)``: ``q̃``, ``k̃`` ``(B, H, N, D)`` (text rows copied) and counts
  ``(2, B, H, 4, D)``; registered as the custom op ``timeripple::channel_reuse`` so ``torch.compile``
  traces through it. CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``.
* ``channel_mode.channel_reuse_counts(x_video, ...)``: the plain-torch twin built on ``timeripple.detect`` (the
  specification); ``fused_unsupported_reason(...)``: why a call has to use the torch path.
"""

from __future__ import annotations

import contextlib
from typing import Mapping, Sequence

import torch
import triton
import triton.language as tl

from .. import options
from .._validation import value_error
from .triton_common import interpreting

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
SUPPORTED_WINDOWS = (2, 3, 4)
MAX_TILE = 16384  # largest (KP³ · D_pad) of one cube that a program may hold
TILE_ELEMS = 2048  # target elements per program tile (cubes · KP³ · D_pad) on the GPU


# ----------------------------------------------------------------------------------------------
# kernel


@triton.jit
def _line_pass(xf, nonfin, valid, p, size, theta, AX: tl.constexpr, WINDOW: tl.constexpr):
    """Pass of every element on the axis of tile dimension ``AX`` (1 = t, 2 = y, 3 = x)."""
    if WINDOW == 2:  # Δ = |a0 - a1| / 2, exactly as torch's float32 result for two values
        hi = tl.max(tl.where(valid, xf, float("-inf")), axis=AX)
        lo = tl.min(tl.where(valid, xf, float("inf")), axis=AX)
        delta = tl.expand_dims((hi - lo) * 0.5, AX)
    else:  # population std, two passes
        size_f = size.to(tl.float32)
        mean = tl.expand_dims(tl.sum(tl.where(valid, xf, 0.0), axis=AX), AX) / size_f
        dev = tl.where(valid, xf - mean, 0.0)
        delta = tl.sqrt(tl.expand_dims(tl.sum(dev * dev, axis=AX), AX) / size_f)
    bad = tl.expand_dims(tl.max(nonfin, axis=AX), AX)  # any non-finite member in the line
    return valid & (p != 0) & (size >= 2) & (bad == 0) & (delta < theta)


@triton.jit
def _prefer(via, pass_t, pass_y, pass_x, A: tl.constexpr):
    """``via = A`` where axis ``A`` passes (called from the lowest priority to the highest)."""
    if A == 0:
        via = tl.where(pass_t, 0, via)
    elif A == 1:
        via = tl.where(pass_y, 1, via)
    elif A == 2:
        via = tl.where(pass_x, 2, via)
    return via


@triton.jit
def _first_of_line(val, p, AX: tl.constexpr):
    """Broadcast the value of the line's first member (``p == 0``) along tile dimension ``AX``."""
    return tl.expand_dims(tl.max(tl.where(p == 0, val, float("-inf")), axis=AX), AX)


@triton.jit
def _channel_reuse_kernel(
    X, OUT, CNT,
    stride_xb, stride_xh, stride_xn, stride_ob, stride_oh, stride_on,
    H, GT, GY, GX, NCY, NCX, NCUBES, theta_t, theta_y, theta_x,
    CHECK_T: tl.constexpr, CHECK_Y: tl.constexpr, CHECK_X: tl.constexpr,
    PRI0: tl.constexpr, PRI1: tl.constexpr, PRI2: tl.constexpr, NHOPS: tl.constexpr,
    WINDOW: tl.constexpr, KP: tl.constexpr, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
    BLOCK_C: tl.constexpr, STATS: tl.constexpr,
):
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    # -- cube and member coordinates, tile (C, KP, KP, KP, D) --
    cube = pid * BLOCK_C + tl.arange(0, BLOCK_C)
    cube = cube[:, None, None, None, None]                              # (C, 1, 1, 1, 1)
    pt = tl.arange(0, KP)[None, :, None, None, None]                    # (1, KP, 1, 1, 1)
    py = tl.arange(0, KP)[None, None, :, None, None]                    # (1, 1, KP, 1, 1)
    px = tl.arange(0, KP)[None, None, None, :, None]                    # (1, 1, 1, KP, 1)
    offs_d = tl.arange(0, D_PAD)[None, None, None, None, :]             # (1, 1, 1, 1, D)
    t0 = (cube // (NCY * NCX)) * WINDOW
    y0 = ((cube // NCX) % NCY) * WINDOW
    x0 = (cube % NCX) * WINDOW
    size_t = tl.minimum(GT - t0, WINDOW)                                # (C, 1, 1, 1, 1) window sizes
    size_y = tl.minimum(GY - y0, WINDOW)
    size_x = tl.minimum(GX - x0, WINDOW)
    valid = (cube < NCUBES) & (pt < size_t) & (py < size_y) & (px < size_x) & (offs_d < HEAD_DIM)
    tok = (t0 + pt) * (GY * GX) + (y0 + py) * GX + (x0 + px)            # (C, KP, KP, KP, 1) video index
    tok = tok.to(tl.int64)
    # -- load --
    x_ptrs = X + b.to(tl.int64) * stride_xb + h.to(tl.int64) * stride_xh + tok * stride_xn + offs_d
    x = tl.load(x_ptrs, mask=valid, other=0.0)                          # (C, KP, KP, KP, D) input dtype
    xf = x.to(tl.float32)
    nonfin = ((xf != xf) | (tl.abs(xf) == float("inf"))).to(tl.int32)
    # -- per-axis passes --
    never = valid & (offs_d < 0)                                        # all False, tile shape
    pass_t = never
    pass_y = never
    pass_x = never
    if CHECK_T:
        pass_t = _line_pass(xf, nonfin, valid, pt, size_t, theta_t, 1, WINDOW)
    if CHECK_Y:
        pass_y = _line_pass(xf, nonfin, valid, py, size_y, theta_y, 2, WINDOW)
    if CHECK_X:
        pass_x = _line_pass(xf, nonfin, valid, px, size_x, theta_x, 3, WINDOW)
    # -- first passing axis in priority order (-1 = computed) --
    via = tl.full([BLOCK_C, KP, KP, KP, D_PAD], -1, dtype=tl.int32)
    via = _prefer(via, pass_t, pass_y, pass_x, PRI2)
    via = _prefer(via, pass_t, pass_y, pass_x, PRI1)
    via = _prefer(via, pass_t, pass_y, pass_x, PRI0)
    # -- resolve chains: each hop takes the current value of the source (one coordinate cleared) --
    val = xf
    for _ in tl.static_range(NHOPS):
        nxt = xf
        if CHECK_T:
            nxt = tl.where(via == 0, _first_of_line(val, pt, 1), nxt)
        if CHECK_Y:
            nxt = tl.where(via == 1, _first_of_line(val, py, 2), nxt)
        if CHECK_X:
            nxt = tl.where(via == 2, _first_of_line(val, px, 3), nxt)
        val = nxt
    out = tl.where(via >= 0, val.to(x.dtype), x)  # sources are finite: the round trip is exact
    o_ptrs = OUT + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh + tok * stride_on + offs_d
    tl.store(o_ptrs, out, mask=valid)
    # -- counts per channel: reused, reused via t / y / x --
    if STATS:
        d1 = tl.arange(0, D_PAD)
        cnt_ptrs = CNT + bh.to(tl.int64) * 4 * HEAD_DIM + d1
        dmask = d1 < HEAD_DIM
        for code in tl.static_range(4):
            if code == 0:
                hit = via >= 0
            else:
                hit = via == code - 1
            n = tl.sum(tl.sum(tl.sum(tl.sum(hit.to(tl.int32), axis=0), axis=0), axis=0), axis=0)  # (D,)
            tl.atomic_add(cnt_ptrs + code * HEAD_DIM, n, mask=dmask)


# ----------------------------------------------------------------------------------------------
# launcher


def fused_unsupported_reason(x: torch.Tensor, window: int, channel_alpha=None) -> str | None:
    """Why ``channel_reuse_fused`` cannot run this call (None when it can)."""
    if channel_alpha is not None:
        return "channel_alpha is computed by the torch path"
    if window not in SUPPORTED_WINDOWS:
        return f"window {window} is not one of {SUPPORTED_WINDOWS}"
    if x.dtype not in SUPPORTED_DTYPES:
        return f"dtype {x.dtype} is not one of fp16/bf16/fp32"
    kp = triton.next_power_of_2(window)
    if kp ** 3 * triton.next_power_of_2(x.shape[-1]) > MAX_TILE:
        return f"head dim {x.shape[-1]} with window {window} needs more than {MAX_TILE} elements per cube"
    return None


def _launch(x: torch.Tensor, out: torch.Tensor, counts: torch.Tensor | None, grid, thresholds, priority,
            window: int) -> None:
    """Write the video rows of ``out`` (``x`` and ``out``: video slices ``(B, H, Nv, D)``)."""
    if window == 2:  # the common case: a dedicated elementwise kernel over 2x2x2 cubes (memory-bound)
        from .channel_fused_pairs import launch_pairs

        launch_pairs(x, out, counts, grid, thresholds, priority)
        return
    B, H, Nv, D = x.shape
    T, Hg, Wg = grid
    checked = [a for a in priority if thresholds.get(a, 0) > 0]
    codes = [options.AXES.index(a) for a in checked] + [-1] * (3 - len(checked))
    theta = [float(thresholds.get(a, 0.0)) if a in checked else 0.0 for a in options.AXES]
    kp = triton.next_power_of_2(window)
    d_pad = triton.next_power_of_2(D)
    ncy, ncx = triton.cdiv(Hg, window), triton.cdiv(Wg, window)
    ncubes = triton.cdiv(T, window) * ncy * ncx
    per_cube = kp ** 3 * d_pad
    target = per_cube if interpreting() else TILE_ELEMS
    block_c = max(1, target // per_cube)
    num_warps = min(8, max(4, block_c * per_cube // 256))  # 8 warps from 2048-element tiles
    cnt = counts if counts is not None else out  # unused when STATS is off
    _channel_reuse_kernel[(triton.cdiv(ncubes, block_c), B * H)](
        x, out, cnt,
        x.stride(0), x.stride(1), x.stride(2), out.stride(0), out.stride(1), out.stride(2),
        H, T, Hg, Wg, ncy, ncx, ncubes, theta[0], theta[1], theta[2],
        CHECK_T=0 in codes, CHECK_Y=1 in codes, CHECK_X=2 in codes,
        PRI0=codes[0], PRI1=codes[1], PRI2=codes[2], NHOPS=max(1, len(checked)),
        WINDOW=window, KP=kp, HEAD_DIM=D, D_PAD=d_pad, BLOCK_C=block_c, STATS=counts is not None,
        num_warps=num_warps,
    )


def _channel_reuse_impl(q, k, start, nv, grid, thetas, priority, window, stats):
    thresholds = dict(zip(options.AXES, thetas))
    prio = [options.AXES[i] for i in priority]
    B, H, N, D = q.shape
    counts = torch.zeros((2, B, H, 4, D), dtype=torch.int32, device=q.device) if stats else None
    outs = []
    guard = torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext()
    with guard:
        for side, x in enumerate((q, k)):
            if x.stride(-1) != 1:
                x = x.contiguous()
            out = torch.empty_like(x)  # same layout as x (as the torch path's clone)
            if nv < N:  # text rows unchanged
                out[:, :, :start].copy_(x[:, :, :start])
                out[:, :, start + nv:].copy_(x[:, :, start + nv:])
            _launch(x[:, :, start:start + nv], out[:, :, start:start + nv],
                    counts[side] if stats else None, grid, thresholds, prio, window)
            outs.append(out)
    if counts is None:
        counts = torch.zeros((2, B, H, 4, D), dtype=torch.int32, device=q.device)
    return outs[0], outs[1], counts


@torch.library.custom_op("timeripple::channel_reuse", mutates_args=())
def _channel_reuse_op(
    q: torch.Tensor, k: torch.Tensor, start: int, nv: int, grid: list[int], thetas: list[float],
    priority: list[int], window: int, stats: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _channel_reuse_impl(q, k, start, nv, grid, thetas, priority, window, stats)


@_channel_reuse_op.register_fake
def _channel_reuse_fake(q, k, start, nv, grid, thetas, priority, window, stats):
    B, H, N, D = q.shape
    counts = q.new_empty((2, B, H, 4, D), dtype=torch.int32)
    return torch.empty_like(q), torch.empty_like(k), counts


def channel_reuse_fused(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    grid: Sequence[int],
    thresholds: Mapping[str, float],
    text_len: int = 0,
    text_position: str = "after",
    window: int = 2,
    priority: Sequence[str] = options.AXES,
    stats: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Channel-mode ``q̃``, ``k̃`` from one fused detection + reuse kernel per side.

    Args:
        q, k (`torch.Tensor`): ``(B, H, N, D)``, fp16/bf16/fp32, on CUDA (or the CPU under
            ``TRITON_INTERPRET=1``); ``N = T*Hg*Wg + text_len``.
        grid, text_len, text_position, window, priority: as in ``ripple_attention`` (``window`` 2, 3 or 4).
        thresholds (`dict[str, float]`): ``θ`` per checked axis (``options.normalize_thresholds``);
            axes absent or at 0 are not checked.
        stats (`bool`, defaults to True): also count; otherwise ``counts`` is all zeros.

    Returns:
        ``(q̃, k̃, counts)``: ``q̃``/``k̃`` like ``q``/``k`` (text rows unchanged), and int32 ``counts``
        ``(2, B, H, 4, D)``: per side, batch, head and channel the number of reused video elements
        (index 0) and of those reused through ``t``, ``y``, ``x`` (indices 1-3).

    Example::

        >>> q = k = torch.randn(1, 2, 8 * 9, 64, device="cuda")
        >>> q_t, k_t, counts = channel_reuse_fused(q, k, grid=(2, 4, 9), thresholds={"t": 0.5})
    """
    B, H, N, D = q.shape
    T, Hg, Wg = (int(g) for g in grid)
    nv = T * Hg * Wg
    if nv + text_len != N or k.shape != q.shape:
        raise value_error("grid", grid, f"T*Hg*Wg + text_len must equal N = {N} and k.shape == q.shape",
                          "pass the latent grid and the number of text tokens")
    if not (q.is_cuda or interpreting()):
        raise value_error("q.device", q.device, "the fused channel kernel needs CUDA (or TRITON_INTERPRET=1)",
                          "use timeripple.ripple_attention, which falls back to torch")
    reason = fused_unsupported_reason(q, window)
    if reason is not None:
        raise value_error("q", tuple(q.shape), reason, "use timeripple.ripple_attention (torch fallback)")
    start = text_len if (text_position == "before" and text_len) else 0
    thetas = [float(thresholds.get(a, 0.0)) for a in options.AXES]
    prio = [options.AXES.index(a) for a in priority]
    return _channel_reuse_op(q, k, start, nv, [T, Hg, Wg], thetas, prio, int(window), bool(stats))
