"""Fused token-mode detection: per-token, per-axis window scores of q or k in one kernel.

``token_axis_scores(x, grid, window, criterion)`` returns float32 ``(B, H, Nv, 3)`` (axes in the order
``t, y, x``): the token's score on that axis (``strict``: ``max_c Δ_c``; ``rms``: ``sqrt(mean_c Δ_c²)``),
``Δ_c`` the population std of its window per channel in float32, and NaN where the token is the first
member of its window, sits in a size-1 trailing window, or its window holds a non-finite value. This is
``torch.stack([where(non_first, detect.token_scores(x, grid, a, window, criterion), nan) for a in
"tyx"], -1)`` (its plain-torch specification is ``detect.axis_score_table``); the thresholding, budget selection and
source resolution on these ``(B, H, Nv, 3)`` scores stay in ``detect.py`` (cheap, one small tensor).

For ``window == 2`` (the default) one program takes a row of 2x2x2 cubes and reads each member row
exactly once; each of a cube's 12 edges scores its second member on the edge's axis
(``Δ_c = |a_c - b_c| / 2``). Larger windows read each member row once per pass (mean, then
deviations), per axis. No ``(B, H, Nv, D)`` float32 intermediate is written.
"""

from __future__ import annotations


import torch
import triton
import triton.language as tl

from .._validation import value_error
from .triton_common import cube_row, interpreting

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
def _finite_rows(v):
    """(BX,) True where the (BX, D) float32 tile's row holds no NaN/Inf."""
    return tl.sum(((v != v) | (tl.abs(v) == float("inf"))).to(tl.int32), axis=1) == 0


@triton.jit
def _edge(a, b, fa, fb, CHECK: tl.constexpr, RMS: tl.constexpr, HEAD_DIM: tl.constexpr):
    """Window-2 score of the pair ``(a, b)`` of (BX, D) rows: ``Δ_c = |a_c - b_c| / 2`` reduced over
    channels (max, or root mean square); NaN when either row is not finite or the axis is unchecked."""
    if CHECK:
        delta = tl.abs(a - b) * 0.5
        if RMS:
            score = tl.sqrt(tl.sum(delta * delta, axis=1) / HEAD_DIM)
        else:
            score = tl.max(delta, axis=1)
        return tl.where(fa & fb, score, float("nan"))
    else:
        return tl.full([a.shape[0]], float("nan"), dtype=tl.float32)


@triton.jit
def _store3(out_base, n, s_t, s_y, s_x, mask):
    ptr = out_base + n.to(tl.int64) * 3
    tl.store(ptr + 0, s_t, mask=mask)
    tl.store(ptr + 1, s_y, mask=mask)
    tl.store(ptr + 2, s_x, mask=mask)


@triton.jit
def _cube_scores_kernel(
    X, OUT, stride_xb, stride_xh, stride_xn, H, T, HG, WG, NPY, NBX,
    CHECK_T: tl.constexpr, CHECK_Y: tl.constexpr, CHECK_X: tl.constexpr,
    RMS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_X: tl.constexpr,
):
    """Window 2: one program per row of ``BLOCK_X`` 2x2x2 cubes of one (b, h). The eight members are
    read once as (BLOCK_X, D) tiles; each of the cube's 12 edges gives the score of its second member
    on the edge's axis. First members (offset 0 on an axis) get NaN there."""
    bh = tl.program_id(1)
    b, h, t0, y0, xc = cube_row(tl.program_id(0), bh, H, NPY, NBX, BLOCK_X)
    xa = 2 * xc                                                     # (BX,) x of the first members
    d = tl.arange(0, HEAD_DIM)[None, :]
    in_a = xa < WG
    in_b = (xa + 1) < WG
    t1 = (xa * 0 + t0 + 1) < T                                      # (BX,) second t-layer exists
    y1 = (xa * 0 + y0 + 1) < HG
    n000 = (t0 * HG + y0) * WG + xa
    n010 = n000 + WG
    n100 = n000 + HG * WG
    n110 = n100 + WG
    m000, m001 = in_a, in_b
    m010, m011 = in_a & y1, in_b & y1
    m100, m101 = in_a & t1, in_b & t1
    m110, m111 = in_a & t1 & y1, in_b & t1 & y1
    x_base = X + b.to(tl.int64) * stride_xb + h.to(tl.int64) * stride_xh
    v000 = tl.load(x_base + n000[:, None].to(tl.int64) * stride_xn + d, mask=m000[:, None], other=0.0).to(tl.float32)
    v001 = tl.load(x_base + (n000 + 1)[:, None].to(tl.int64) * stride_xn + d, mask=m001[:, None], other=0.0).to(tl.float32)
    v010 = tl.load(x_base + n010[:, None].to(tl.int64) * stride_xn + d, mask=m010[:, None], other=0.0).to(tl.float32)
    v011 = tl.load(x_base + (n010 + 1)[:, None].to(tl.int64) * stride_xn + d, mask=m011[:, None], other=0.0).to(tl.float32)
    v100 = tl.load(x_base + n100[:, None].to(tl.int64) * stride_xn + d, mask=m100[:, None], other=0.0).to(tl.float32)
    v101 = tl.load(x_base + (n100 + 1)[:, None].to(tl.int64) * stride_xn + d, mask=m101[:, None], other=0.0).to(tl.float32)
    v110 = tl.load(x_base + n110[:, None].to(tl.int64) * stride_xn + d, mask=m110[:, None], other=0.0).to(tl.float32)
    v111 = tl.load(x_base + (n110 + 1)[:, None].to(tl.int64) * stride_xn + d, mask=m111[:, None], other=0.0).to(tl.float32)
    f000, f001, f010, f011 = _finite_rows(v000), _finite_rows(v001), _finite_rows(v010), _finite_rows(v011)
    f100, f101, f110, f111 = _finite_rows(v100), _finite_rows(v101), _finite_rows(v110), _finite_rows(v111)
    nan = tl.full([BLOCK_X], float("nan"), dtype=tl.float32)
    out_base = OUT + bh.to(tl.int64) * (T * HG * WG) * 3
    _store3(out_base, n000, nan, nan, nan, m000)
    _store3(out_base, n000 + 1, nan, nan, _edge(v001, v000, f001, f000, CHECK_X, RMS, HEAD_DIM), m001)
    _store3(out_base, n010, nan, _edge(v010, v000, f010, f000, CHECK_Y, RMS, HEAD_DIM), nan, m010)
    _store3(out_base, n010 + 1, nan, _edge(v011, v001, f011, f001, CHECK_Y, RMS, HEAD_DIM),
            _edge(v011, v010, f011, f010, CHECK_X, RMS, HEAD_DIM), m011)
    _store3(out_base, n100, _edge(v100, v000, f100, f000, CHECK_T, RMS, HEAD_DIM), nan, nan, m100)
    _store3(out_base, n100 + 1, _edge(v101, v001, f101, f001, CHECK_T, RMS, HEAD_DIM), nan,
            _edge(v101, v100, f101, f100, CHECK_X, RMS, HEAD_DIM), m101)
    _store3(out_base, n110, _edge(v110, v010, f110, f010, CHECK_T, RMS, HEAD_DIM),
            _edge(v110, v100, f110, f100, CHECK_Y, RMS, HEAD_DIM), nan, m110)
    _store3(out_base, n110 + 1, _edge(v111, v011, f111, f011, CHECK_T, RMS, HEAD_DIM),
            _edge(v111, v101, f111, f101, CHECK_Y, RMS, HEAD_DIM),
            _edge(v111, v110, f111, f110, CHECK_X, RMS, HEAD_DIM), m111)


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
    checks = dict(CHECK_T="t" in axes, CHECK_Y="y" in axes, CHECK_X="x" in axes)
    if int(window) == 2:  # every member row read once, per 2x2x2 cube
        block_x = 2 if interpreting() else max(1, 512 // D)
        npy, nbx = -(-Hg // 2), triton.cdiv(-(-Wg // 2), block_x)
        _cube_scores_kernel[(-(-T // 2) * npy * nbx, B * H)](
            x, out, x.stride(0), x.stride(1), x.stride(2), H, T, Hg, Wg, npy, nbx,
            RMS=criterion == "rms", HEAD_DIM=D, BLOCK_X=block_x, num_warps=2, **checks,  # swept on H100
        )
        return out
    BLOCK_T = 16 if interpreting() else max(16, 8192 // D)
    _token_scores_kernel[(triton.cdiv(Nv, BLOCK_T), B * H)](
        x, out, x.stride(0), x.stride(1), x.stride(2), H, Nv, T, Hg, Wg,
        **checks, WINDOW=int(window), RMS=criterion == "rms", HEAD_DIM=D, BLOCK_T=BLOCK_T,
        num_warps=4 if BLOCK_T * D <= 4096 else 8,
    )
    return out
