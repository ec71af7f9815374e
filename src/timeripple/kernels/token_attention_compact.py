"""Token attention by compaction: gather the kept tokens contiguously, run the fastest SDPA, scatter back.

The per-key bias ``log(count) + key_bias`` of token attention (docs/ARCHITECTURE.md) keeps SDPA off its
fastest path when passed as a mask. This file folds it into the **values** instead, which is exact:

    Σ_s e^{q·k_s + log w_s} v'_s / Σ_s e^{q·k_s + log w_s}
        = [Σ_s e^{q·k_s} (w_s v'_s)] / [Σ_s e^{q·k_s} w_s]
        = SDPA(q, k, [w·v' | w])[:D] / SDPA(q, k, [w·v' | w])[D]

with ``w_s = count_s · exp(key_bias_s - max key_bias)`` (the common factor cancels), so ``w·v'`` is the
plain sum of the merged ``v`` rows times ``exp(key_bias - max)``. The value gets one extra channel (the
weight), padded to ``D + 8`` for the 8-element alignment SDPA backends need; ``q`` and ``k`` stay at
``D``. A masked key (``-inf``) has ``w = 0``; a query whose keys are all masked gets zeros (``den = 0``).

Variants (``variant=``), all exact; which one is fastest depends on the SDPA backends of the build
(docs/kernels.md has the measurements and the rule):

* ``"vcount"``: ``q, k`` at ``D``, ``v`` at ``D + 8`` (needs an SDPA backend with ``d_v != d_qk``);
* ``"pad"``: ``q, k, v`` all at ``D + 8`` (zero channels in ``q, k``);
* ``"bias"``: ``v'`` at ``D`` and the bias as a ``(B, H, 1, Mk)`` float mask.

Heads of different kept lengths are padded to the longest (padding queries repeat the first kept query
and are discarded, padding keys repeat the first kept key with weight 0), so this suits budget mode
(equal lengths) and threshold mode when lengths are close; ``padded_pair_ratio`` tells how much work
padding adds. Heads run in chunks so that the compacted buffers stay small (peak memory).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .token_attention_triton import TokenPlanLayout
from .triton_common import group_v_sums, interpreting

VARIANTS = ("vcount", "pad", "bias")
DEFAULT_VARIANT = "vcount"
# compacted buffers of one chunk of heads, as a share of q's bytes (peak memory <= dense + 10%)
# 0.18 (+ the int32 layout, ~0.09 q) kept one call's peak within dense + 10%, but ran Wan2.1-1.3B one head
# per chunk: the README's fidelity setting at 75% took 8.07 ms there against 6.10 ms at 1.0 (HunyuanVideo
# 41.1 / 38.8 ms; H200, BENCHMARKS.md issue 10). 1.0 adds up to q's bytes to one attention call's peak, as
# the class path does (class_attention.CLASS_CHUNK_SHARE); a transformer forward's peak does not change.
CHUNK_SHARE = 1.0
# largest padded-pairs / real-pairs ratio for which compaction + cuDNN beats the varlen Triton kernel
PAD_LIMIT = 1.8


@triton.jit
def gather_rows_kernel(
    X, IDX, L, OUT, stride_xb, stride_xh, stride_xn, H, HC, H0, N, M,
    HEAD_DIM: tl.constexpr, DOUT: tl.constexpr, DP: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """``OUT[b, h - H0, r, :D] = X[b, h, IDX[b, h, r]]`` for ``r < L[b, h]`` (row ``IDX[b, h, 0]`` for
    padding rows), channels ``D..DOUT`` zero. ``IDX``/``L`` cover all ``H`` heads; ``OUT`` is the
    chunk's contiguous ``(B, HC, M, DOUT)``."""
    pid = tl.program_id(0)
    bh = tl.program_id(1)                                            # over (B, HC)
    b = bh // HC
    h = H0 + bh % HC
    gbh = b * H + h                                                  # row of the (B, H, ·) layout
    offs_r = pid * BLOCK_R + tl.arange(0, BLOCK_R)                   # (R,) compacted rows
    offs_d = tl.arange(0, DP)                                        # (DP,) DP = next pow2 >= DOUT
    in_m = offs_r < M
    length = tl.load(L + gbh)
    row = tl.load(IDX + gbh.to(tl.int64) * N + tl.where(offs_r < length, offs_r, 0), mask=in_m, other=0)
    x_base = X + b.to(tl.int64) * stride_xb + h.to(tl.int64) * stride_xh
    vals = tl.load(x_base + row[:, None].to(tl.int64) * stride_xn + offs_d[None, :],
                   mask=in_m[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0)
    tl.store(OUT + (bh.to(tl.int64) * M + offs_r[:, None]) * DOUT + offs_d[None, :], vals,
             mask=in_m[:, None] & (offs_d[None, :] < DOUT))


@triton.jit
def merge_values_kernel(
    V, IDX_K, LK, COUNT, START, PERM, KB, VA, BIAS,
    stride_vb, stride_vh, stride_vn, H, HC, H0, N, MK,
    HAS_KB: tl.constexpr, WEIGHTED: tl.constexpr,
    HEAD_DIM: tl.constexpr, DOUT: tl.constexpr, DP: tl.constexpr, BLOCK_G: tl.constexpr,
):
    """Per kept key ``s`` (rank ``r``): its group's ``v`` rows summed (members are contiguous in
    ``PERM``). ``WEIGHTED``: ``VA[r] = [e^kb·Σv | count·e^kb | 0]`` (``KB`` holds ``exp(key_bias - max)``);
    else ``VA[r] = mean v`` and ``BIAS[r] = log(count) + key_bias`` (``KB`` holds ``key_bias``).
    Padding rows (``r >= LK``): ``VA = 0``, ``BIAS = -inf``."""
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // HC
    h = H0 + bh % HC
    offs_r = pid * BLOCK_G + tl.arange(0, BLOCK_G)                   # (G,) kept-key ranks
    offs_d = tl.arange(0, DP)                                        # (DP,) DP = next pow2 >= DOUT
    in_m = offs_r < MK
    gbh = b * H + h                                                  # row of the (B, H, ·) layout
    lk = tl.load(LK + gbh)
    valid = offs_r < lk
    row = gbh.to(tl.int64) * N
    v_base = V + b.to(tl.int64) * stride_vb + h.to(tl.int64) * stride_vh
    s, cnt, acc = group_v_sums(v_base, stride_vn, IDX_K, COUNT, START, PERM, row, offs_r, valid, offs_d,
                               HEAD_DIM, BLOCK_G, DP)                 # summed v of each group
    cnt_f = cnt.to(tl.float32)
    if WEIGHTED:
        e = tl.full([BLOCK_G], 1.0, dtype=tl.float32)
        if HAS_KB:
            e = tl.load(KB + b.to(tl.int64) * N + s, mask=valid, other=0.0)
        w = tl.where(valid, cnt_f * e, 0.0)                          # (G,) weight, 0 on padding
        acc = acc * e[:, None] + tl.where(offs_d[None, :] == HEAD_DIM, w[:, None], 0.0)
        acc = tl.where(valid[:, None], acc, 0.0)
    else:
        acc = acc / tl.maximum(cnt_f, 1.0)[:, None]
        bias = tl.log(cnt_f)
        if HAS_KB:
            bias += tl.load(KB + b.to(tl.int64) * N + s, mask=valid, other=0.0)
        tl.store(BIAS + bh.to(tl.int64) * MK + offs_r, tl.where(valid, bias, float("-inf")), mask=in_m)
    tl.store(VA + (bh.to(tl.int64) * MK + offs_r[:, None]) * DOUT + offs_d[None, :],
             acc.to(VA.dtype.element_ty), mask=in_m[:, None] & (offs_d[None, :] < DOUT))


@triton.jit
def _finish_kernel(
    OA, Q_SRC, RANK_Q, OUT, VALID, stride_ab, stride_ah, stride_am, stride_ob, stride_oh, stride_on, H, HC, H0, N, MQ,
    DIVIDE: tl.constexpr, HAS_VALID: tl.constexpr, HEAD_DIM: tl.constexpr, DH: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    """Every row of ``OUT`` for the chunk's heads: ``out[i] = oa[rank(q_src[i])]`` (kept rows and reused
    rows alike); ``DIVIDE``: ``oa[:, :D] / oa[:, D]`` (0 when the weight sum is 0: every key masked).
    ``HAS_VALID``: ``VALID`` is a 0-d bool; False (a plan without the caller's static sizes) gives NaN.
    ``OA`` is read through its strides (``stride_a*``, last dim contiguous): CUDA's flash and
    memory-efficient SDPA return a ``(B, M, nh, dv)`` buffer seen as ``(B, nh, M, dv)``."""
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // HC
    h = H0 + bh % HC
    offs_i = pid * BLOCK_S + tl.arange(0, BLOCK_S)                   # (S,) token index
    offs_d = tl.arange(0, DH)                                        # (DH,) DH = next pow2 >= D
    ok = offs_i < N
    ok_d = offs_d[None, :] < HEAD_DIM
    row = (b.to(tl.int64) * H + h) * N                               # row of the (B, H, N) layout
    src = tl.load(Q_SRC + row + offs_i, mask=ok, other=0)
    r = tl.minimum(tl.load(RANK_Q + row + src, mask=ok, other=0), MQ - 1)  # (S,) compacted row, in range
    oa_rows = OA + b.to(tl.int64) * stride_ab + (bh % HC).to(tl.int64) * stride_ah + r.to(tl.int64) * stride_am
    o = tl.load(oa_rows[:, None] + offs_d[None, :], mask=ok[:, None] & ok_d, other=0.0).to(tl.float32)
    if DIVIDE:
        den = tl.load(oa_rows + HEAD_DIM, mask=ok, other=1.0).to(tl.float32)
        o = tl.where(den[:, None] > 0.0, o / tl.where(den > 0.0, den, 1.0)[:, None], 0.0)
    if HAS_VALID:
        o = o + tl.where(tl.load(VALID) != 0, 0.0, float("nan"))
    o_base = OUT + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh
    tl.store(o_base + offs_i[:, None].to(tl.int64) * stride_on + offs_d[None, :], o.to(OUT.dtype.element_ty),
             mask=ok[:, None] & ok_d)


# ----------------------------------------------------------------------------------------------
# launcher


def padded_pair_ratio(lq: torch.Tensor, lk: torch.Tensor) -> tuple[int, int, float]:
    """``(Mq, Mk, padded pairs / real pairs)`` of per-(b, h) kept lengths; one host sync."""
    mq, mk, real = torch.stack([lq.max().long(), lk.max().long(), (lq.long() * lk.long()).sum()]).tolist()
    return int(mq), int(mk), lq.numel() * mq * mk / max(real, 1)


def use_compaction(q: torch.Tensor, ratio: float) -> bool:
    """The dispatch rule: compaction + SDPA for fp16/bf16 (cuDNN), a head dim that SDPA takes with the
    weight channel (``D % 8 == 0``, ``D + 8 <= 256``) and padding that adds at most ``PAD_LIMIT`` x the
    real pairs; else the varlen Triton kernel (``token_attention_triton``), which reads through index lists at
    about half of cuDNN's rate on the kept pairs (docs/kernels.md)."""
    D = q.shape[-1]
    return q.dtype in (torch.float16, torch.bfloat16) and D % 8 == 0 and D + 8 <= 256 and ratio <= PAD_LIMIT


def heads_per_chunk(B, H, N, D, mq, mk, itemsize, dv, share=CHUNK_SHARE) -> int:
    """Heads per chunk so that the chunk's compacted buffers (q, k, v, out of SDPA) take at most
    ``share`` of the bytes of ``q`` (at least one head). The int32 token layout (six ``(B, H, N)``
    tensors, ~9% of q's bytes in bf16 at d 128) is built once for all heads, outside this share."""
    per_head = B * (mq * (D + dv) + mk * (D + dv)) * itemsize
    return max(1, min(H, int(share * B * H * N * D * itemsize // per_head)))


def token_attention_compact(q, k, v, q_src, k_src, *, scale, key_bias=None, variant=DEFAULT_VARIANT,
                            lengths=None, chunk_share=None, key_repr="source", valid=None):
    """Token attention (same contract as ``reference.token_attention_ref``) by compaction + SDPA.

    Args:
        q, k, v: ``(B, H, N, D)``, last dim contiguous, fp16/bf16 (fp32 works, on a slower SDPA backend).
        q_src, k_src: int32 ``(B, H, N)`` contiguous token plan.
        scale (`float`): score scale. key_bias: float32 ``(B, N)`` or None.
        variant (`str`): ``"vcount"``, ``"pad"`` or ``"bias"`` (module docstring).
        lengths: optional ``(lq, lk, mq, mk)`` if the caller already has them (saves a host sync).
        chunk_share (`float`, *optional*): compacted buffers of one chunk of heads <= this share of q's
            bytes (default: the module's ``CHUNK_SHARE`` at call time).
        key_repr (`str`): ``"source"`` (a merged key is its source's ``k``) or ``"mean"`` (its group's mean).
        valid (`torch.Tensor`, *optional*): 0-d bool on the device; False makes every output NaN (static
            ``lengths`` from the caller that the plan does not have: never a result built on wrong sizes).
    """
    B, H, N, D = q.shape
    chunk_share = CHUNK_SHARE if chunk_share is None else chunk_share
    out = torch.empty((B, H, N, D), dtype=q.dtype, device=q.device)
    if N == 0:
        return out
    ar = torch.arange(N, device=q.device, dtype=torch.int32)
    if lengths is None:
        lq, lk = (q_src == ar).sum(-1, dtype=torch.int32), (k_src == ar).sum(-1, dtype=torch.int32)
        mq, mk, _ = padded_pair_ratio(lq, lk)
    else:
        lq, lk, mq, mk = lengths
    dv = D if variant == "bias" else D + 8
    dq = dv if variant == "pad" else D
    weighted = variant != "bias"
    kb = None
    if key_bias is not None:
        if weighted:  # exp(key_bias - max over the batch's finite biases): -inf -> weight 0
            top = key_bias.amax(-1, keepdim=True)
            kb = torch.exp(key_bias - torch.where(torch.isfinite(top), top, torch.zeros_like(top)))
        else:
            kb = key_bias
        kb = kb.float().contiguous()
    hc = heads_per_chunk(B, H, N, D, mq, mk, q.element_size(), dv, chunk_share)
    interp = interpreting()
    BLOCK_R = 16 if interp else 64
    BLOCK_S = 16 if interp else 64
    # -- the token layout, once for all heads (few launches, B·H rows per scan) --
    layout = TokenPlanLayout(q_src, k_src, (lq, lk, mq, mk))
    for h0 in range(0, H, hc):
        h1 = min(H, h0 + hc)
        nh = h1 - h0
        # -- compacted q, k (contiguous), merged values (+ weight channel or bias) --
        qc = torch.empty((B, nh, mq, dq), dtype=q.dtype, device=q.device)
        kc = torch.empty((B, nh, mk, dq), dtype=k.dtype, device=k.device)
        va = torch.empty((B, nh, mk, dv), dtype=v.dtype, device=v.device)
        bias = torch.empty((B, nh, mk), dtype=torch.float32, device=q.device) if not weighted else va
        for x, idx, length, dst, m in ((q, layout.idx_q, layout.lq, qc, mq), (k, layout.idx_k, layout.lk, kc, mk)):
            gather_rows_kernel[(triton.cdiv(m, BLOCK_R), B * nh)](
                x, idx, length, dst, x.stride(0), x.stride(1), x.stride(2), H, nh, h0, N, m,
                HEAD_DIM=D, DOUT=dq, DP=triton.next_power_of_2(dq), BLOCK_R=BLOCK_R, num_warps=4,
            )
        if key_repr == "mean":  # the group mean of k replaces the gathered source rows
            merge_values_kernel[(triton.cdiv(mk, BLOCK_R), B * nh)](
                k, layout.idx_k, layout.lk, layout.count, layout.start, layout.perm, kc, kc,
                torch.empty((B, nh, mk), dtype=torch.float32, device=q.device),  # bias output, unused
                k.stride(0), k.stride(1), k.stride(2), H, nh, h0, N, mk,
                HAS_KB=False, WEIGHTED=False, HEAD_DIM=D, DOUT=dq, DP=triton.next_power_of_2(dq),
                BLOCK_G=BLOCK_R, num_warps=4,
            )
        merge_values_kernel[(triton.cdiv(mk, BLOCK_R), B * nh)](
            v, layout.idx_k, layout.lk, layout.count, layout.start, layout.perm, kb if kb is not None else va, va, bias,
            v.stride(0), v.stride(1), v.stride(2), H, nh, h0, N, mk,
            HAS_KB=kb is not None, WEIGHTED=weighted, HEAD_DIM=D, DOUT=dv, DP=triton.next_power_of_2(dv),
            BLOCK_G=BLOCK_R, num_warps=4,
        )
        # -- attention over the kept tokens (the fastest SDPA backend for these shapes) --
        mask = None if weighted else bias.to(q.dtype)[:, :, None, :]   # (B, nh, 1, Mk)
        if interp:  # the CPU math SDPA rounds its bf16 internals; run it as cuDNN does (fp32 inside)
            oa = F.scaled_dot_product_attention(qc.float(), kc.float(), va.float(), scale=scale,
                                                attn_mask=None if mask is None else mask.float()).to(q.dtype)
        else:
            oa = F.scaled_dot_product_attention(qc, kc, va, attn_mask=mask, scale=scale)  # (B, nh, Mq, dv)
        del qc, kc, va, mask
        if oa.stride(-1) != 1:
            oa = oa.contiguous()
        # -- every output row from its kept source's compacted row --
        _finish_kernel[(triton.cdiv(N, BLOCK_S), B * nh)](
            oa, q_src, layout.rank_q, out, valid if valid is not None else out, oa.stride(0), oa.stride(1),
            oa.stride(2), out.stride(0), out.stride(1), out.stride(2), H, nh, h0, N, mq, DIVIDE=weighted, HAS_VALID=valid is not None, HEAD_DIM=D, DH=triton.next_power_of_2(D), BLOCK_S=BLOCK_S, num_warps=4,
        )
        del oa
    return out
