"""Fused token-mode detection: per-token, per-axis window scores of q or k in one kernel.

``token_axis_scores(x, grid, window, criterion)`` returns float32 ``(B, H, Nv, 3)`` (axes in the order
``t, y, x``): the token's score on that axis (``strict``: ``max_c Δ_c``; ``rms``: ``sqrt(mean_c Δ_c²)``),
``Δ_c`` the population std of its window per channel in float32, and NaN where the token is the first
member of its window, sits in a size-1 trailing window, or its window holds a non-finite value. This is
``torch.stack([where(non_first, detect.token_scores(x, grid, a, window, criterion), nan) for a in
"tyx"], -1)`` (the plain-torch twin ``token_axis_scores_torch``); the thresholding, budget selection and
source resolution on these ``(B, H, Nv, 3)`` scores stay in ``detect.py`` (cheap, one small tensor).

For ``window == 2`` (the default) the kernel loads each token's row once and one partner row per
checked axis (``Δ_c = |x_c - partner_c| / 2``); larger windows read each member row once per pass
(mean, then deviations). No ``(B, H, Nv, D)`` float32 intermediate is written.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .._validation import value_error
from .token_kernels import interpreting

CRITERIA = ("strict", "rms")


@triton.jit
def _axis_score(x_base, offs_i, coord, length, stride_axis, offs_d, valid_i, stride_n,
                WINDOW: tl.constexpr, RMS: tl.constexpr, HEAD_DIM: tl.constexpr):
    """Score of each token in the block on one axis (NaN when not a non-first member)."""
    pos = coord % WINDOW                                            # (T,) place inside the window
    w0 = coord - pos                                                # (T,) window start coordinate
    size = tl.minimum(length - w0, WINDOW)                          # (T,) members in the window
    first = offs_i - pos * stride_axis                              # (T,) flat index of the first member
    # -- pass 1: mean per channel --
    total = tl.zeros([offs_i.shape[0], HEAD_DIM], dtype=tl.float32)
    finite = valid_i
    for m in tl.static_range(WINDOW):
        take = valid_i & (m < size)
        row = tl.load(x_base + (first + m * stride_axis)[:, None].to(tl.int64) * stride_n + offs_d[None, :],
                      mask=take[:, None], other=0.0).to(tl.float32)
        finite = finite & (tl.sum((row != row) | (tl.abs(row) == float("inf")), axis=1) == 0)
        total += row
    size_f = tl.maximum(size, 1).to(tl.float32)
    mean = total / size_f[:, None]
    # -- pass 2: population variance per channel --
    var = tl.zeros([offs_i.shape[0], HEAD_DIM], dtype=tl.float32)
    for m in tl.static_range(WINDOW):
        take = valid_i & (m < size)
        row = tl.load(x_base + (first + m * stride_axis)[:, None].to(tl.int64) * stride_n + offs_d[None, :],
                      mask=take[:, None], other=0.0).to(tl.float32)
        dev = tl.where(take[:, None], row - mean, 0.0)
        var += dev * dev
    delta = tl.sqrt(var / size_f[:, None])                           # (T, D)
    if RMS:
        score = tl.sqrt(tl.sum(delta * delta, axis=1) / HEAD_DIM)
    else:
        score = tl.max(delta, axis=1)
    ok = finite & (pos != 0) & (size >= 2)
    return tl.where(ok, score, float("nan"))


@triton.jit
def _pair_score(x_base, offs_i, coord, stride_axis, offs_d, valid_i, stride_n, row_i, finite_i,
                RMS: tl.constexpr, HEAD_DIM: tl.constexpr):
    """Window 2: ``Δ_c = |x_c - partner_c| / 2`` (population std of two values). The token's own row
    ``row_i`` is loaded once by the caller and shared by the three axes; one partner row per axis."""
    second = valid_i & (coord % 2 == 1)                             # (T,) non-first members
    row_p = tl.load(x_base + (offs_i - stride_axis)[:, None].to(tl.int64) * stride_n + offs_d[None, :],
                    mask=second[:, None], other=0.0).to(tl.float32)  # (T, D) partner rows
    finite = finite_i & (tl.sum((row_p != row_p) | (tl.abs(row_p) == float("inf")), axis=1) == 0)
    delta = tl.abs(row_i - row_p) * 0.5                             # (T, D)
    if RMS:
        score = tl.sqrt(tl.sum(delta * delta, axis=1) / HEAD_DIM)
    else:
        score = tl.max(delta, axis=1)
    return tl.where(second & finite, score, float("nan"))


@triton.jit
def _token_scores_kernel(
    X, OUT, stride_xb, stride_xh, stride_xn, H, NV, GT, GY, GX,
    CHECK_T: tl.constexpr, CHECK_Y: tl.constexpr, CHECK_X: tl.constexpr,
    WINDOW: tl.constexpr, RMS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_T: tl.constexpr,
):
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_i = pid * BLOCK_T + tl.arange(0, BLOCK_T)                  # (T,) video token index
    offs_d = tl.arange(0, HEAD_DIM)
    valid_i = offs_i < NV
    x_base = X + b.to(tl.int64) * stride_xb + h.to(tl.int64) * stride_xh
    out_base = OUT + (bh.to(tl.int64) * NV + offs_i) * 3            # (T,) row of (B*H*NV, 3)
    # -- grid coordinates (t-major) --
    t = offs_i // (GY * GX)
    y = (offs_i // GX) % GY
    x = offs_i % GX
    nan = tl.full([BLOCK_T], float("nan"), dtype=tl.float32)
    s_t = nan
    s_y = nan
    s_x = nan
    if WINDOW == 2:  # one load of the token's own row, one partner row per axis
        row_i = tl.load(x_base + offs_i[:, None].to(tl.int64) * stride_xn + offs_d[None, :],
                        mask=valid_i[:, None], other=0.0).to(tl.float32)  # (T, D)
        finite_i = tl.sum((row_i != row_i) | (tl.abs(row_i) == float("inf")), axis=1) == 0
        if CHECK_T:
            s_t = _pair_score(x_base, offs_i, t, GY * GX, offs_d, valid_i, stride_xn, row_i, finite_i, RMS, HEAD_DIM)
        if CHECK_Y:
            s_y = _pair_score(x_base, offs_i, y, GX, offs_d, valid_i, stride_xn, row_i, finite_i, RMS, HEAD_DIM)
        if CHECK_X:
            s_x = _pair_score(x_base, offs_i, x, 1, offs_d, valid_i, stride_xn, row_i, finite_i, RMS, HEAD_DIM)
    else:
        if CHECK_T:
            s_t = _axis_score(x_base, offs_i, t, GT, GY * GX, offs_d, valid_i, stride_xn, WINDOW, RMS, HEAD_DIM)
        if CHECK_Y:
            s_y = _axis_score(x_base, offs_i, y, GY, GX, offs_d, valid_i, stride_xn, WINDOW, RMS, HEAD_DIM)
        if CHECK_X:
            s_x = _axis_score(x_base, offs_i, x, GX, 1, offs_d, valid_i, stride_xn, WINDOW, RMS, HEAD_DIM)
    tl.store(out_base + 0, s_t, mask=valid_i)
    tl.store(out_base + 1, s_y, mask=valid_i)
    tl.store(out_base + 2, s_x, mask=valid_i)


def token_axis_scores(x, grid, window=2, criterion="strict", axes=("t", "y", "x")) -> torch.Tensor:
    """Fused per-token, per-axis scores of the video part ``x`` (B, H, Nv, D): float32 (B, H, Nv, 3).

    ``D`` must be a power of two >= 16; ``criterion`` ``"strict"`` or ``"rms"`` (``"fraction"``
    stays in torch). CUDA tensors, or CPU under ``TRITON_INTERPRET=1``.
    """
    if criterion not in CRITERIA:
        raise value_error("criterion", criterion, f"the fused detection supports {CRITERIA}",
                          "use detect.token_scores for 'fraction'")
    B, H, Nv, D = x.shape
    T, Hg, Wg = (int(g) for g in grid)
    if T * Hg * Wg != Nv:
        raise value_error("grid", grid, f"T*Hg*Wg must equal the video length {Nv}", "pass the latent grid")
    if D < 16 or D & (D - 1):
        raise value_error("x.shape[-1]", D, "the fused detection needs a power-of-two head dim >= 16",
                          "use detect.token_scores")
    if not (x.is_cuda or interpreting()):
        raise value_error("x.device", x.device, "needs CUDA (or TRITON_INTERPRET=1)", "use detect.token_scores")
    if x.stride(-1) != 1:
        x = x.contiguous()
    out = torch.empty((B, H, Nv, 3), dtype=torch.float32, device=x.device)
    BLOCK_T = 16 if interpreting() else max(16, 8192 // D)
    _token_scores_kernel[(triton.cdiv(Nv, BLOCK_T), B * H)](
        x, out, x.stride(0), x.stride(1), x.stride(2), H, Nv, T, Hg, Wg,
        CHECK_T="t" in axes, CHECK_Y="y" in axes, CHECK_X="x" in axes,
        WINDOW=int(window), RMS=criterion == "rms", HEAD_DIM=D, BLOCK_T=BLOCK_T,
        num_warps=4 if BLOCK_T * D <= 4096 else 8,
    )
    return out


def token_axis_scores_torch(x, grid, window=2, criterion="strict", axes=("t", "y", "x")) -> torch.Tensor:
    """Plain-torch twin of ``token_axis_scores`` built on ``timeripple.detect`` (the specification)."""
    from .. import detect

    cols = []
    for axis in ("t", "y", "x"):
        if axis not in axes:
            cols.append(torch.full(x.shape[:3], math.nan, device=x.device))
            continue
        _, non_first = detect.axis_partners(grid, axis, window, x.device)
        score = detect.token_scores(x, grid, axis, window, criterion)
        cols.append(torch.where(non_first.view(1, 1, -1), score, math.nan))
    return torch.stack(cols, dim=-1)
