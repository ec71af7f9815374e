"""Triton helpers shared by several kernel modules: the interpreter switch, the program -> cube mapping of
the window-2 kernels (channel mode and token detection) and the per-group ``v`` sums of merged keys (both
token-attention paths)."""

from __future__ import annotations

import triton
import triton.language as tl

from .triton_env import interpreting  # noqa: F401  (re-exported for the kernel modules)


@triton.jit
def cube_row(row, bh, H, NPY, NBX, BLOCK_X: tl.constexpr):
    """Program ``(row, bh)`` of a window-2 cube kernel -> ``(b, h, t0, y0, xc)``: batch, head, the
    first t and y of its cubes, and the ``BLOCK_X`` cube indices along x (cubes are 2x2x2; ``NPY`` cube
    rows along y, ``NBX`` programs along x)."""
    b = bh // H
    h = bh % H
    xb = row % NBX
    yp = (row // NBX) % NPY
    tp = row // (NBX * NPY)
    return b, h, 2 * tp, 2 * yp, xb * BLOCK_X + tl.arange(0, BLOCK_X)


@triton.jit
def group_v_sums(V_BASE, stride_vn, IDX_K, COUNT, START, PERM, row, offs_r, valid, offs_d,
                 HEAD_DIM: tl.constexpr, BLOCK_G: tl.constexpr, DP: tl.constexpr):
    """For the kept-key ranks ``offs_r`` of one (b, h) (layout row offset ``row``): the key index
    ``s``, its group size ``cnt`` and the float32 sum of its group's ``v`` rows ``(BLOCK_G, DP)``
    (members are contiguous in ``PERM`` from ``START[s]``; channels ``>= HEAD_DIM`` are zero)."""
    s = tl.load(IDX_K + row + offs_r, mask=valid, other=0)           # (G,) key index
    cnt = tl.load(COUNT + row + s, mask=valid, other=0)              # (G,) group size
    start = tl.load(START + row + s, mask=valid, other=0)            # (G,) first slot in PERM
    acc = tl.zeros([BLOCK_G, DP], dtype=tl.float32)
    for g in range(0, tl.max(cnt, axis=0)):
        take = valid & (g < cnt)
        j = tl.load(PERM + row + start + g, mask=take, other=0)      # (G,) member index
        acc += tl.load(V_BASE + j[:, None].to(tl.int64) * stride_vn + offs_d[None, :],
                       mask=take[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0).to(tl.float32)
    return s, cnt, acc
