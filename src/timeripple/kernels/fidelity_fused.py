"""Fused kernels of the token-plan fidelity options (``timeripple.token_fidelity``, issue 9's setting).

Three Triton kernels replace the plain-torch versions on CUDA; each computes the same result as its
torch specification in ``token_fidelity`` (float32 inside, up to float32 summation order):

* :func:`kv_score_table_fused` = ``token_fidelity.kv_score_table`` (``key_score="kv"``): one program per
  block of tokens reads each key and value row and its window-first partner per axis, writes ``|δk|``
  and ``|δv|`` and per-block sums of ``v`` and ``v²``; a second small kernel forms ``σ_v`` from those
  sums and the score ``|δk|·(|δv| + ½·|δk|·σ_v)``. No float32 ``(B, H, Nv, D)`` intermediate.
* :func:`interp_score_table_fused` = ``token_fidelity.interp_score_table`` (``query_repr="interp"``):
  the interpolation residual per axis in one kernel.
* :func:`interpolate_reused_rows_fused` = ``token_fidelity.interpolate_reused_rows``: the output epilogue
  of ``query_repr="interp"`` in one kernel, **in place**. The torch version iterates the rule
  ``row_i = lerp(row_prev, row_next)`` ``n_axes`` times over the whole tensor; a token reused via axis
  ``a`` reads tokens that are window-first on ``a`` (and on every axis its reader was), so a chain has at
  most ``n_axes`` hops and the iteration reaches its fixed point. The kernel evaluates that fixed point
  per token directly (a tree of at most ``2^n_axes`` kept rows, float32, the same arithmetic), reads
  only kept rows and writes only reused rows, so it can update ``out`` in place.

Shapes are static and nothing synchronises with the host, so the kernels can run inside a CUDA graph.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..options import AXES
from .triton_common import interpreting

__all__ = ["kv_score_table_fused", "interp_score_table_fused", "interpolate_reused_rows_fused"]


@triton.jit
def _axis_geom(offs_i, coord, length, stride_axis, WINDOW: tl.constexpr):
    """``(prev, nxt, w, non_first)`` of the tokens on one axis: the window-first token at or before
    each, the next window's first token (``prev`` at the edge), the weight ``(c % K) / K`` (0 at the
    edge) and whether the token is a non-first window member."""
    off = coord % WINDOW
    prev = offs_i - off * stride_axis
    has_next = coord - off + WINDOW < length
    nxt = tl.where(has_next, prev + WINDOW * stride_axis, prev)
    w = tl.where(has_next, off.to(tl.float32) / WINDOW, 0.0)
    return prev, nxt, w, off != 0


@triton.jit
def _rows(base, idx, mask, stride_n, offs_d, HEAD_DIM: tl.constexpr):
    """(BLOCK, DP) float32 rows ``idx`` of a head (zeros where masked or past the head dim)."""
    return tl.load(base + idx[:, None].to(tl.int64) * stride_n + offs_d[None, :],
                   mask=mask[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0).to(tl.float32)


# ----------------------------------------------------------------------------------------------
# key_score="kv"


@triton.jit
def _kv_axis(k_base, v_base, ki, vi, offs_i, coord, length, stride_axis, valid, stride_kn, stride_vn, offs_d,
             CHECK: tl.constexpr, WINDOW: tl.constexpr, HEAD_DIM: tl.constexpr):
    """``(|δk|, |δv|)`` of the block's tokens on one axis, NaN where a token cannot merge there."""
    prev, _, _, non_first = _axis_geom(offs_i, coord, length, stride_axis, WINDOW)
    ok = valid & non_first
    if CHECK:
        kp = _rows(k_base, prev, ok, stride_kn, offs_d, HEAD_DIM)
        vp = _rows(v_base, prev, ok, stride_vn, offs_d, HEAD_DIM)
        dk = (ki - kp) * 0.5
        dv = (vi - vp) * 0.5
        nk = tl.sqrt(tl.sum(dk * dk, axis=1))
        nv = tl.sqrt(tl.sum(dv * dv, axis=1))
        return tl.where(ok, nk, float("nan")), tl.where(ok, nv, float("nan"))
    nan = tl.full(offs_i.shape, float("nan"), tl.float32)
    return nan, nan


@triton.jit
def _kv_delta_kernel(
    K, V, DK, DV, PART, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn, H, NV, T, HG, WG, NB,
    CHECK_T: tl.constexpr, CHECK_Y: tl.constexpr, CHECK_X: tl.constexpr, WINDOW: tl.constexpr,
    HEAD_DIM: tl.constexpr, DP: tl.constexpr, BLOCK: tl.constexpr,
):
    """``DK[bh, i, a] = |k_i - k_p| / 2`` and ``DV`` likewise (``p`` = window-first partner on axis
    ``a``; NaN where none); ``PART[bh, pid] = (Σ v, Σ v²)`` over the block's rows (float32)."""
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_i = pid * BLOCK + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, DP)
    valid = offs_i < NV
    k_base = K + b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh
    v_base = V + b.to(tl.int64) * stride_vb + h.to(tl.int64) * stride_vh
    ki = _rows(k_base, offs_i, valid, stride_kn, offs_d, HEAD_DIM)
    vi = _rows(v_base, offs_i, valid, stride_vn, offs_d, HEAD_DIM)
    part = PART + (bh.to(tl.int64) * NB + pid) * 2
    tl.store(part, tl.sum(tl.sum(vi, axis=1), axis=0))
    tl.store(part + 1, tl.sum(tl.sum(vi * vi, axis=1), axis=0))
    hw = HG * WG
    out = (bh.to(tl.int64) * NV + offs_i) * 3
    dk, dv = _kv_axis(k_base, v_base, ki, vi, offs_i, offs_i // hw, T, hw, valid, stride_kn, stride_vn, offs_d,
                      CHECK_T, WINDOW, HEAD_DIM)
    tl.store(DK + out, dk, mask=valid)
    tl.store(DV + out, dv, mask=valid)
    dk, dv = _kv_axis(k_base, v_base, ki, vi, offs_i, (offs_i // WG) % HG, HG, WG, valid, stride_kn, stride_vn,
                      offs_d, CHECK_Y, WINDOW, HEAD_DIM)
    tl.store(DK + out + 1, dk, mask=valid)
    tl.store(DV + out + 1, dv, mask=valid)
    dk, dv = _kv_axis(k_base, v_base, ki, vi, offs_i, offs_i % WG, WG, 1, valid, stride_kn, stride_vn, offs_d,
                      CHECK_X, WINDOW, HEAD_DIM)
    tl.store(DK + out + 2, dk, mask=valid)
    tl.store(DV + out + 2, dv, mask=valid)


@triton.jit
def _kv_finish_kernel(DK, DV, PART, OUT, NB, M, inv_count, NBP: tl.constexpr, BLOCK: tl.constexpr):
    """``OUT = |δk|·(|δv| + ½·|δk|·σ_v)`` over the flat ``(Nv·3)`` table of head ``bh`` (NaN where not
    finite); ``σ_v`` from the head's per-block sums (population std over ``Nv·D`` values)."""
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    offs_p = tl.arange(0, NBP)
    part = PART + bh.to(tl.int64) * NB * 2 + offs_p * 2
    s1 = tl.sum(tl.load(part, mask=offs_p < NB, other=0.0), axis=0)
    s2 = tl.sum(tl.load(part + 1, mask=offs_p < NB, other=0.0), axis=0)
    mean = s1 * inv_count
    sigma = tl.sqrt(tl.maximum(s2 * inv_count - mean * mean, 0.0))
    sigma = sigma + (s2 - s2)  # NaN / Inf values in v give a non-finite sigma, as torch's std does
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    ok = offs < M
    row = bh.to(tl.int64) * M + offs
    dk = tl.load(DK + row, mask=ok, other=0.0)
    dv = tl.load(DV + row, mask=ok, other=0.0)
    score = dk * (dv + 0.5 * dk * sigma)
    finite = (score == score) & (tl.abs(score) != float("inf"))
    tl.store(OUT + row, tl.where(finite, score, float("nan")), mask=ok)


def _block(d: int) -> int:
    return 16 if interpreting() else (32 if d <= 128 else 16)


def kv_score_table_fused(k: torch.Tensor, v: torch.Tensor, grid, axes, window: int) -> torch.Tensor:
    """``token_fidelity.kv_score_table`` in two Triton launches: float32 ``(B, H, Nv, 3)``.

    Args:
        k, v (`torch.Tensor`): ``(B, H, Nv, D)`` video keys and values (views with a unit last stride).
        grid (`tuple[int, int, int]`), axes (`tuple[str, ...]`), window (`int`): as in ``ripple_attention``.
    """
    B, H, NV, D = k.shape
    T, HG, WG = (int(g) for g in grid)
    k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (k, v))
    BLOCK = _block(D)
    nb = triton.cdiv(NV, BLOCK)
    dk = torch.empty((B, H, NV, 3), dtype=torch.float32, device=k.device)
    dv = torch.empty_like(dk)
    part = torch.empty((B * H, nb, 2), dtype=torch.float32, device=k.device)
    if B * H == 0 or NV == 0:
        return dk.fill_(float("nan"))
    _kv_delta_kernel[(nb, B * H)](
        k, v, dk, dv, part, k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
        H, NV, T, HG, WG, nb, CHECK_T="t" in axes, CHECK_Y="y" in axes, CHECK_X="x" in axes, WINDOW=window,
        HEAD_DIM=D, DP=triton.next_power_of_2(D), BLOCK=BLOCK, num_warps=4,
    )
    out = torch.empty_like(dk)
    m = NV * 3
    FB = 256 if interpreting() else 2048
    _kv_finish_kernel[(triton.cdiv(m, FB), B * H)](
        dk, dv, part, out, nb, m, 1.0 / (NV * D), NBP=triton.next_power_of_2(nb), BLOCK=FB, num_warps=4,
    )
    return out


# ----------------------------------------------------------------------------------------------
# query_repr="interp": the selection score


@triton.jit
def _interp_axis(base, xi, offs_i, coord, length, stride_axis, valid, stride_n, offs_d,
                 CHECK: tl.constexpr, WINDOW: tl.constexpr, HEAD_DIM: tl.constexpr):
    prev, nxt, w, non_first = _axis_geom(offs_i, coord, length, stride_axis, WINDOW)
    ok = valid & non_first
    if CHECK:
        a = _rows(base, prev, ok, stride_n, offs_d, HEAD_DIM)
        c = _rows(base, nxt, ok, stride_n, offs_d, HEAD_DIM)
        lerp = a * (1 - w)[:, None] + c * w[:, None]
        r = xi - lerp
        score = tl.sqrt(tl.sum(r * r, axis=1) / HEAD_DIM)
        return tl.where(ok, score, float("nan"))
    return tl.full(offs_i.shape, float("nan"), tl.float32)


@triton.jit
def _interp_score_kernel(
    X, OUT, stride_xb, stride_xh, stride_xn, H, NV, T, HG, WG,
    CHECK_T: tl.constexpr, CHECK_Y: tl.constexpr, CHECK_X: tl.constexpr, WINDOW: tl.constexpr,
    HEAD_DIM: tl.constexpr, DP: tl.constexpr, BLOCK: tl.constexpr,
):
    """``OUT[bh, i, a] = rms_c(x_i - lerp(x_prev, x_next))`` on axis ``a`` (NaN for first members)."""
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_i = pid * BLOCK + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, DP)
    valid = offs_i < NV
    base = X + b.to(tl.int64) * stride_xb + h.to(tl.int64) * stride_xh
    xi = _rows(base, offs_i, valid, stride_xn, offs_d, HEAD_DIM)
    hw = HG * WG
    out = (bh.to(tl.int64) * NV + offs_i) * 3
    s = _interp_axis(base, xi, offs_i, offs_i // hw, T, hw, valid, stride_xn, offs_d, CHECK_T, WINDOW, HEAD_DIM)
    tl.store(OUT + out, s, mask=valid)
    s = _interp_axis(base, xi, offs_i, (offs_i // WG) % HG, HG, WG, valid, stride_xn, offs_d, CHECK_Y, WINDOW,
                     HEAD_DIM)
    tl.store(OUT + out + 1, s, mask=valid)
    s = _interp_axis(base, xi, offs_i, offs_i % WG, WG, 1, valid, stride_xn, offs_d, CHECK_X, WINDOW, HEAD_DIM)
    tl.store(OUT + out + 2, s, mask=valid)


def interp_score_table_fused(x: torch.Tensor, grid, axes, window: int) -> torch.Tensor:
    """``token_fidelity.interp_score_table`` in one Triton launch: float32 ``(B, H, Nv, 3)``."""
    B, H, NV, D = x.shape
    T, HG, WG = (int(g) for g in grid)
    x = x if x.stride(-1) == 1 else x.contiguous()
    out = torch.empty((B, H, NV, 3), dtype=torch.float32, device=x.device)
    if B * H == 0 or NV == 0:
        return out.fill_(float("nan"))
    BLOCK = _block(D)
    _interp_score_kernel[(triton.cdiv(NV, BLOCK), B * H)](
        x, out, x.stride(0), x.stride(1), x.stride(2), H, NV, T, HG, WG,
        CHECK_T="t" in axes, CHECK_Y="y" in axes, CHECK_X="x" in axes, WINDOW=window,
        HEAD_DIM=D, DP=triton.next_power_of_2(D), BLOCK=BLOCK, num_warps=4,
    )
    return out


# ----------------------------------------------------------------------------------------------
# query_repr="interp": the output epilogue


@triton.jit
def _hop(node, via, T, HG, WG, WINDOW: tl.constexpr):
    """``(prev, nxt, w)`` of ``node`` on its axis ``via`` (0 = t, 1 = y, 2 = x)."""
    hw = HG * WG
    coord = tl.where(via == 0, node // hw, tl.where(via == 1, (node // WG) % HG, node % WG))
    length = tl.where(via == 0, T, tl.where(via == 1, HG, WG))
    stride = tl.where(via == 0, hw, tl.where(via == 1, WG, 1))
    prev, nxt, w, _ = _axis_geom(node, coord, length, stride, WINDOW)
    return prev, nxt, w


@triton.jit
def _value1(base, via_row, node, active, stride_n, offs_d, T, HG, WG, WINDOW: tl.constexpr,
            HEAD_DIM: tl.constexpr):
    """Fixed-point row of ``node`` when the rows it reads are kept: ``(row, reused)``."""
    via = tl.load(via_row + node, mask=active, other=-1).to(tl.int32)
    r = active & (via >= 0)
    prev, nxt, w = _hop(node, via, T, HG, WG, WINDOW)
    a = _rows(base, prev, r, stride_n, offs_d, HEAD_DIM)
    b = _rows(base, nxt, r, stride_n, offs_d, HEAD_DIM)
    own = _rows(base, node, active & (via < 0), stride_n, offs_d, HEAD_DIM)
    return tl.where(r[:, None], a * (1 - w)[:, None] + b * w[:, None], own), r


@triton.jit
def _value2(base, via_row, node, active, stride_n, offs_d, T, HG, WG, WINDOW: tl.constexpr,
            HEAD_DIM: tl.constexpr):
    """Fixed-point row of ``node`` for chains of at most two hops."""
    via = tl.load(via_row + node, mask=active, other=-1).to(tl.int32)
    r = active & (via >= 0)
    prev, nxt, w = _hop(node, via, T, HG, WG, WINDOW)
    a, _ = _value1(base, via_row, prev, r, stride_n, offs_d, T, HG, WG, WINDOW, HEAD_DIM)
    b, _ = _value1(base, via_row, nxt, r, stride_n, offs_d, T, HG, WG, WINDOW, HEAD_DIM)
    own = _rows(base, node, active & (via < 0), stride_n, offs_d, HEAD_DIM)
    return tl.where(r[:, None], a * (1 - w)[:, None] + b * w[:, None], own), r


@triton.jit
def _value3(base, via_row, node, active, stride_n, offs_d, T, HG, WG, WINDOW: tl.constexpr,
            HEAD_DIM: tl.constexpr):
    """Fixed-point row of ``node`` for chains of at most three hops."""
    via = tl.load(via_row + node, mask=active, other=-1).to(tl.int32)
    r = active & (via >= 0)
    prev, nxt, w = _hop(node, via, T, HG, WG, WINDOW)
    a, _ = _value2(base, via_row, prev, r, stride_n, offs_d, T, HG, WG, WINDOW, HEAD_DIM)
    b, _ = _value2(base, via_row, nxt, r, stride_n, offs_d, T, HG, WG, WINDOW, HEAD_DIM)
    own = _rows(base, node, active & (via < 0), stride_n, offs_d, HEAD_DIM)
    return tl.where(r[:, None], a * (1 - w)[:, None] + b * w[:, None], own), r


@triton.jit
def _interp_rows_kernel(
    OUT, VIA, stride_ob, stride_oh, stride_on, H, NV, T, HG, WG,
    DEPTH: tl.constexpr, WINDOW: tl.constexpr, HEAD_DIM: tl.constexpr, DP: tl.constexpr, BLOCK: tl.constexpr,
):
    """Every reused video row of ``OUT`` (``VIA >= 0``) := its interpolation fixed point (in place)."""
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_i = pid * BLOCK + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, DP)
    valid = offs_i < NV
    base = OUT + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh
    via_row = VIA + bh.to(tl.int64) * NV
    if DEPTH == 1:
        val, r = _value1(base, via_row, offs_i, valid, stride_on, offs_d, T, HG, WG, WINDOW, HEAD_DIM)
    elif DEPTH == 2:
        val, r = _value2(base, via_row, offs_i, valid, stride_on, offs_d, T, HG, WG, WINDOW, HEAD_DIM)
    else:
        val, r = _value3(base, via_row, offs_i, valid, stride_on, offs_d, T, HG, WG, WINDOW, HEAD_DIM)
    tl.store(base + offs_i[:, None].to(tl.int64) * stride_on + offs_d[None, :], val.to(OUT.dtype.element_ty),
             mask=r[:, None] & (offs_d[None, :] < HEAD_DIM))


def interpolate_reused_rows_fused(out: torch.Tensor, via: torch.Tensor, grid, window: int, start: int,
                                  n_axes: int) -> torch.Tensor:
    """``token_fidelity.interpolate_reused_rows`` in one Triton launch, **in place** on ``out``
    ``(B, H, N, D)`` (its video rows ``start : start + Nv``); returns ``out``.

    ``via`` int8 ``(B, H, Nv)``: the axis index (into ``options.AXES``) a video query is reused through,
    -1 = computed. ``n_axes`` (1 to 3): the number of checked axes (the longest chain)."""
    B, H, N, D = out.shape
    NV = via.shape[2]
    T, HG, WG = (int(g) for g in grid)
    if B * H == 0 or NV == 0:
        return out
    if not 1 <= n_axes <= len(AXES):
        raise ValueError(f"n_axes must be 1 to {len(AXES)}, got {n_axes}")
    if out.stride(-1) != 1:
        raise ValueError("out must have a unit last stride (the kernel updates it in place)")
    video = out[:, :, start : start + NV]
    BLOCK = 16
    _interp_rows_kernel[(triton.cdiv(NV, BLOCK), B * H)](
        video, via.contiguous(), video.stride(0), video.stride(1), video.stride(2), H, NV, T, HG, WG,
        DEPTH=n_axes, WINDOW=window, HEAD_DIM=D, DP=triton.next_power_of_2(D), BLOCK=BLOCK, num_warps=4,
    )
    return out
