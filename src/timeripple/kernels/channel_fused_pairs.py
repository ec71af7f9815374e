"""Channel-mode detection + reuse for ``window = 2``: one program per row of 2×2×2 cubes.

With ``window = 2`` every cube has eight members, ``(i, j, l) ∈ {0, 1}³`` (offsets along t, y, x).
A program loads the eight members of ``BLOCK_X`` neighbouring cubes of one ``(b, h, t-pair, y-pair)``
as eight ``(BLOCK_X, D)`` tiles, so the whole decision is elementwise on registers:

* the line ``Δ`` on each axis is ``|a0 - a1| / 2`` (the population std of two values), computed in
  float32; a member with offset 1 on an axis passes that axis when ``Δ < θ`` (NaN/Inf never pass;
  unchecked axes get ``θ = 0``, which nothing passes);
* members are resolved in order of how many offsets are 1, so a member's source (the member with
  that offset set to 0) is already resolved; among passing axes the first in ``priority`` wins.

Each program reads its tiles once and writes them once: memory-bound. Same decisions and values as
``detect.detect_channel_sources`` + ``channel_mode.apply_sources`` (the tests check it bit for bit).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_common import cube_row

__all__ = ["launch_pairs"]

BLOCK_X = 4  # cubes per program along x: 8 tiles of (BLOCK_X, D_PAD) fp32 stay in registers


@triton.jit
def _step(val, taken, cnt_t, cnt_y, cnt_x, AX: tl.constexpr, ok_t, src_t, ok_y, src_y, ok_x, src_x):
    """One priority slot: take the source of axis ``AX`` where it passes and nothing was taken yet."""
    if AX == 0:
        ok = ok_t & (taken == 0)
        val = tl.where(ok, src_t, val)
        cnt_t += ok.to(tl.int32)
        taken = taken | ok.to(tl.int32)
    elif AX == 1:
        ok = ok_y & (taken == 0)
        val = tl.where(ok, src_y, val)
        cnt_y += ok.to(tl.int32)
        taken = taken | ok.to(tl.int32)
    elif AX == 2:
        ok = ok_x & (taken == 0)
        val = tl.where(ok, src_x, val)
        cnt_x += ok.to(tl.int32)
        taken = taken | ok.to(tl.int32)
    return val, taken, cnt_t, cnt_y, cnt_x


@triton.jit
def _resolve(val, ok_t, src_t, ok_y, src_y, ok_x, src_x, c_all, c_t, c_y, c_x,
             P0: tl.constexpr, P1: tl.constexpr, P2: tl.constexpr):
    """Resolve one member from its (already resolved) sources in priority order; update counts."""
    taken = tl.zeros(val.shape, dtype=tl.int32)
    zero = tl.zeros(val.shape, dtype=tl.int32)
    ct, cy, cx = zero, zero, zero
    val, taken, ct, cy, cx = _step(val, taken, ct, cy, cx, P0, ok_t, src_t, ok_y, src_y, ok_x, src_x)
    val, taken, ct, cy, cx = _step(val, taken, ct, cy, cx, P1, ok_t, src_t, ok_y, src_y, ok_x, src_x)
    val, taken, ct, cy, cx = _step(val, taken, ct, cy, cx, P2, ok_t, src_t, ok_y, src_y, ok_x, src_x)
    return val, c_all + taken, c_t + ct, c_y + cy, c_x + cx


@triton.jit
def _passes(a, b, theta):
    return tl.abs(a - b) * 0.5 < theta  # NaN (non-finite member, padding) compares False


@triton.jit
def _pairs_kernel(
    x_ptr, out_ptr, cnt_ptr,
    sxb, sxh, sxn, sob, soh, son,
    H, T, HG, WG, NPY, NBX,
    theta_t, theta_y, theta_x,
    P0: tl.constexpr, P1: tl.constexpr, P2: tl.constexpr,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_X: tl.constexpr, STATS: tl.constexpr,
):
    # -- which cubes: program (row of cubes, batch*head) --
    bh = tl.program_id(1)
    b, h, t0, y0, xc = cube_row(tl.program_id(0), bh, H, NPY, NBX, BLOCK_X)  # xc: (BX,) cube index along x
    d = tl.arange(0, D_PAD)
    dmask = d < HEAD_DIM
    x_base = x_ptr + b * sxb + h * sxh
    o_base = out_ptr + b * sob + h * soh

    # -- load the eight members (BX, D) as float32; outside the grid = NaN --
    xa = 2 * xc
    xbb = 2 * xc + 1
    ok_t1 = ((xc * 0 + t0 + 1) < T)[:, None]  # (BX, 1) tensors, so masks combine the same everywhere
    ok_y1 = ((xc * 0 + y0 + 1) < HG)[:, None]
    in_a = (xa < WG)[:, None] & dmask[None, :]
    in_b = (xbb < WG)[:, None] & dmask[None, :]
    n000 = (t0 * HG + y0) * WG + xa
    n001 = n000 + 1
    n010 = n000 + WG
    n011 = n010 + 1
    n100 = n000 + HG * WG
    n101 = n100 + 1
    n110 = n100 + WG
    n111 = n110 + 1
    dd = d[None, :]
    m000 = in_a
    m001 = in_b
    m010 = in_a & ok_y1
    m011 = in_b & ok_y1
    m100 = in_a & ok_t1
    m101 = in_b & ok_t1
    m110 = in_a & ok_t1 & ok_y1
    m111 = in_b & ok_t1 & ok_y1
    nan = float("nan")
    v000 = tl.load(x_base + n000[:, None] * sxn + dd, mask=m000, other=nan).to(tl.float32)
    v001 = tl.load(x_base + n001[:, None] * sxn + dd, mask=m001, other=nan).to(tl.float32)
    v010 = tl.load(x_base + n010[:, None] * sxn + dd, mask=m010, other=nan).to(tl.float32)
    v011 = tl.load(x_base + n011[:, None] * sxn + dd, mask=m011, other=nan).to(tl.float32)
    v100 = tl.load(x_base + n100[:, None] * sxn + dd, mask=m100, other=nan).to(tl.float32)
    v101 = tl.load(x_base + n101[:, None] * sxn + dd, mask=m101, other=nan).to(tl.float32)
    v110 = tl.load(x_base + n110[:, None] * sxn + dd, mask=m110, other=nan).to(tl.float32)
    v111 = tl.load(x_base + n111[:, None] * sxn + dd, mask=m111, other=nan).to(tl.float32)

    # -- pass decisions of every line (the offset-1 member of each line is the candidate) --
    t00 = _passes(v000, v100, theta_t)  # t-lines, indexed by (j, l)
    t01 = _passes(v001, v101, theta_t)
    t10 = _passes(v010, v110, theta_t)
    t11 = _passes(v011, v111, theta_t)
    y00 = _passes(v000, v010, theta_y)  # y-lines, indexed by (i, l)
    y01 = _passes(v001, v011, theta_y)
    y10 = _passes(v100, v110, theta_y)
    y11 = _passes(v101, v111, theta_y)
    x00 = _passes(v000, v001, theta_x)  # x-lines, indexed by (i, j)
    x01 = _passes(v010, v011, theta_x)
    x10 = _passes(v100, v101, theta_x)
    x11 = _passes(v110, v111, theta_x)

    # -- resolve members in order of offsets set (sources first) --
    zero = tl.zeros(v000.shape, dtype=tl.int32)
    no = zero != 0
    c_all, c_t, c_y, c_x = zero, zero, zero, zero
    r000 = v000
    r100, c_all, c_t, c_y, c_x = _resolve(v100, t00, r000, no, v100, no, v100, c_all, c_t, c_y, c_x, P0, P1, P2)
    r010, c_all, c_t, c_y, c_x = _resolve(v010, no, v010, y00, r000, no, v010, c_all, c_t, c_y, c_x, P0, P1, P2)
    r001, c_all, c_t, c_y, c_x = _resolve(v001, no, v001, no, v001, x00, r000, c_all, c_t, c_y, c_x, P0, P1, P2)
    r110, c_all, c_t, c_y, c_x = _resolve(v110, t10, r010, y10, r100, no, v110, c_all, c_t, c_y, c_x, P0, P1, P2)
    r101, c_all, c_t, c_y, c_x = _resolve(v101, t01, r001, no, v101, x10, r100, c_all, c_t, c_y, c_x, P0, P1, P2)
    r011, c_all, c_t, c_y, c_x = _resolve(v011, no, v011, y01, r001, x01, r010, c_all, c_t, c_y, c_x, P0, P1, P2)
    r111, c_all, c_t, c_y, c_x = _resolve(v111, t11, r011, y11, r101, x11, r110, c_all, c_t, c_y, c_x, P0, P1, P2)

    # -- store (values are copies of loaded elements, so the cast back is exact) --
    ty = out_ptr.dtype.element_ty
    tl.store(o_base + n000[:, None] * son + dd, r000.to(ty), mask=m000)
    tl.store(o_base + n001[:, None] * son + dd, r001.to(ty), mask=m001)
    tl.store(o_base + n010[:, None] * son + dd, r010.to(ty), mask=m010)
    tl.store(o_base + n011[:, None] * son + dd, r011.to(ty), mask=m011)
    tl.store(o_base + n100[:, None] * son + dd, r100.to(ty), mask=m100)
    tl.store(o_base + n101[:, None] * son + dd, r101.to(ty), mask=m101)
    tl.store(o_base + n110[:, None] * son + dd, r110.to(ty), mask=m110)
    tl.store(o_base + n111[:, None] * son + dd, r111.to(ty), mask=m111)

    # -- counts per channel: reused, reused via t / y / x (int32 atomics) --
    if STATS:
        c_base = cnt_ptr + bh * 4 * HEAD_DIM + d
        tl.atomic_add(c_base, tl.sum(c_all, axis=0), mask=dmask)
        tl.atomic_add(c_base + HEAD_DIM, tl.sum(c_t, axis=0), mask=dmask)
        tl.atomic_add(c_base + 2 * HEAD_DIM, tl.sum(c_y, axis=0), mask=dmask)
        tl.atomic_add(c_base + 3 * HEAD_DIM, tl.sum(c_x, axis=0), mask=dmask)


def launch_pairs(x: torch.Tensor, out: torch.Tensor, counts, grid, thresholds, priority) -> None:
    """Write the video rows of ``out`` for ``window = 2`` (``x``/``out``: video slices ``(B, H, Nv, D)``
    with unit stride in D; ``counts``: int32 ``(B, H, 4, D)`` contiguous or None)."""
    B, H, Nv, D = x.shape
    T, Hg, Wg = (int(g) for g in grid)
    codes = [("t", "y", "x").index(a) for a in priority if thresholds.get(a, 0) > 0]
    codes += [-1] * (3 - len(codes))
    theta = [float(thresholds.get(a, 0.0)) if thresholds.get(a, 0) > 0 else 0.0 for a in ("t", "y", "x")]
    npt, npy = triton.cdiv(T, 2), triton.cdiv(Hg, 2)
    nbx = triton.cdiv(triton.cdiv(Wg, 2), BLOCK_X)
    d_pad = max(16, triton.next_power_of_2(D))
    stats = counts is not None
    _pairs_kernel[(npt * npy * nbx, B * H)](
        x, out, counts if stats else out,
        x.stride(0), x.stride(1), x.stride(2), out.stride(0), out.stride(1), out.stride(2),
        H, T, Hg, Wg, npy, nbx, theta[0], theta[1], theta[2],
        P0=codes[0], P1=codes[1], P2=codes[2],
        HEAD_DIM=D, D_PAD=d_pad, BLOCK_X=BLOCK_X, STATS=stats,
        num_warps=4,
    )
