"""Triton kernels of token attention: key merge, attention over kept tokens, scatter of reused rows.

Pipeline of ``token_attention_triton`` (no host sync except one ``max`` for the merged-key buffer):

1. compaction (torch ops on ``(B, H, N)`` int tensors): kept query/key index lists packed to the
   front, per-(b, h) lengths ``Lq``/``Lk``, key group counts and the keys sorted by source;
2. ``_merge_keys_kernel``: per kept key ``s`` the mean of its group's ``v`` rows and the bias
   ``log(count) + key_bias`` (stored in log2 units), compacted to ``(B, H, Mk, ·)``;
3. ``_token_attn_kernel``: online-softmax attention of the kept queries (read through ``idx_q``, no
   gathered copy) over the kept keys (``k`` read through ``idx_k``); writes the kept rows of ``out``
   in place; programs past a head's length exit at once; heads with the most pairs start first;
4. ``_scatter_rows_kernel``: ``out[i] = out[q_src[i]]`` for every reused query, in one pass.

The plain-torch reference of the whole thing is ``reference.token_attention_ref``; each stage also has
a small torch twin here (``merge_keys_torch``) used by the tests.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .._validation import value_error
from .token_attention_torch import check_token_inputs, normalize_key_bias
from .triton_common import group_v_sums, interpreting

LOG2E = 1.4426950408889634


# ----------------------------------------------------------------------------------------------
# kernels


@triton.jit
def _merge_keys_kernel(
    V, K, IDX_K, LK, COUNT, START, PERM, KEY_BIAS, VM, KC, BIAS,
    stride_vb, stride_vh, stride_vn, stride_kb, stride_kh, stride_kn,
    H, N, MK,
    HAS_KEY_BIAS: tl.constexpr, STORE_K: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_G: tl.constexpr,
):
    pid_g = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    lk = tl.load(LK + bh)
    if pid_g * BLOCK_G >= lk:
        return
    offs_r = pid_g * BLOCK_G + tl.arange(0, BLOCK_G)                 # (G,) kept-key ranks
    offs_d = tl.arange(0, HEAD_DIM)                                  # (D,)
    valid = offs_r < lk
    row = bh.to(tl.int64) * N
    v_base = V + b.to(tl.int64) * stride_vb + h.to(tl.int64) * stride_vh
    s, cnt, acc = group_v_sums(v_base, stride_vn, IDX_K, COUNT, START, PERM, row, offs_r, valid, offs_d,
                               HEAD_DIM, BLOCK_G, HEAD_DIM)
    cnt_f = tl.maximum(cnt, 1).to(tl.float32)
    out_row = bh.to(tl.int64) * MK + offs_r                          # (G,) row in (B*H, MK)
    tl.store(VM + out_row[:, None] * HEAD_DIM + offs_d[None, :],
             (acc / cnt_f[:, None]).to(VM.dtype.element_ty), mask=valid[:, None])
    # -- bias log(count) (+ key_bias), in log2 units --
    bias = tl.log(cnt_f)
    if HAS_KEY_BIAS:
        bias += tl.load(KEY_BIAS + b.to(tl.int64) * N + s, mask=valid, other=0.0)
    tl.store(BIAS + out_row, bias * 1.4426950408889634, mask=valid)
    if STORE_K:
        k_base = K + b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh
        kk = tl.load(k_base + s[:, None].to(tl.int64) * stride_kn + offs_d[None, :], mask=valid[:, None])
        tl.store(KC + out_row[:, None] * HEAD_DIM + offs_d[None, :], kk, mask=valid[:, None])


@triton.jit
def _mma(a, b, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    """``tl.dot(a, b)`` in fp32 accumulation. ``IEEE``: exact fp32 products (fp32 inputs);
    ``UPCAST``: run a bf16 product in fp32 (the Triton interpreter mis-computes bf16 dots)."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    elif IEEE:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.dot(a, b)


def _attn_configs():
    if interpreting():
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=4, num_stages=1)]
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
        for bm, bn, w, s in [(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 4),
                             (128, 32, 4, 4), (128, 64, 8, 4)]
    ]


@triton.autotune(configs=_attn_configs(), key=["HEAD_DIM", "N_BUCKET", "GATHER_K", "IEEE", "UPCAST"])
@triton.jit
def _token_attn_kernel(
    Q, K, VM, BIAS, IDX_Q, IDX_K, LQ, LK, ORDER, OUT,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn, stride_ob, stride_oh, stride_on,
    H, N, MK, qk_scale, N_BUCKET,
    GATHER_K: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.load(ORDER + tl.program_id(1))                           # heads with most pairs first
    lq = tl.load(LQ + bh)
    if pid_m * BLOCK_M >= lq:
        return
    lk = tl.load(LK + bh)
    b = bh // H
    h = bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)                 # (M,) kept-query ranks
    offs_d = tl.arange(0, HEAD_DIM)                                  # (D,)
    mask_m = offs_m < lq
    row = bh.to(tl.int64) * N
    # -- load the kept queries through their index list --
    iq = tl.load(IDX_Q + row + offs_m, mask=mask_m, other=0).to(tl.int64)  # (M,)
    q_base = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
    q = tl.load(q_base + iq[:, None] * stride_qn + offs_d[None, :], mask=mask_m[:, None], other=0.0)
    k_base = K + b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh
    vm_base = VM + bh.to(tl.int64) * MK * HEAD_DIM
    bias_base = BIAS + bh.to(tl.int64) * MK
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)        # running max (log2 units)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)                      # running denominator
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)            # (M, D)
    for start_n in range(0, lk, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)                     # (Nb,) kept-key ranks
        mask_n = offs_n < lk
        # -- load k (through idx_k, or the compacted copy), v' and the bias --
        if GATHER_K:
            ik = tl.load(IDX_K + row + offs_n, mask=mask_n, other=0).to(tl.int64)
            k = tl.load(k_base + ik[:, None] * stride_kn + offs_d[None, :], mask=mask_n[:, None], other=0.0)
        else:
            k = tl.load(K + (bh.to(tl.int64) * MK + offs_n[:, None]) * HEAD_DIM + offs_d[None, :],
                        mask=mask_n[:, None], other=0.0)
        bias = tl.load(bias_base + offs_n, mask=mask_n, other=float("-inf"))  # (Nb,)
        # -- compute qk --
        qk = _mma(q, tl.trans(k), IEEE, UPCAST)                      # (M, Nb) fp32
        s = qk * qk_scale + bias[None, :]
        # -- online softmax update (rows whose keys are all masked so far keep m = -inf) --
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(vm_base + offs_n[:, None] * HEAD_DIM + offs_d[None, :], mask=mask_n[:, None], other=0.0)
        acc = acc * alpha[:, None] + _mma(p.to(v.dtype), v, IEEE, UPCAST)
        m_i = m_new
    # -- normalise and write the kept rows of out --
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    o = acc / l_safe[:, None]
    o_base = OUT + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh
    tl.store(o_base + iq[:, None] * stride_on + offs_d[None, :], o.to(OUT.dtype.element_ty),
             mask=mask_m[:, None])


@triton.jit
def _scatter_rows_kernel(
    OUT, Q_SRC, stride_ob, stride_oh, stride_on, H, N,
    HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr,
):
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_i = pid * BLOCK_S + tl.arange(0, BLOCK_S)                   # (S,) token index
    offs_d = tl.arange(0, HEAD_DIM)
    in_range = offs_i < N
    src = tl.load(Q_SRC + bh.to(tl.int64) * N + offs_i, mask=in_range, other=0)
    reused = in_range & (src != offs_i)
    # -- copy the source rows (always kept rows, already final) onto the reused rows --
    o_base = OUT + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh
    rows = tl.load(o_base + src[:, None].to(tl.int64) * stride_on + offs_d[None, :], mask=reused[:, None])
    tl.store(o_base + offs_i[:, None].to(tl.int64) * stride_on + offs_d[None, :], rows, mask=reused[:, None])


# ----------------------------------------------------------------------------------------------
# compaction (torch) and the torch twin of the merge


@triton.jit
def _row_cumsum_kernel(X, OUT, N, SHIFT, BLOCK: tl.constexpr):
    """Inclusive int32 prefix sum of each row of ``X`` (R, N) minus ``SHIFT``; one program per row,
    walking the row in blocks with a running carry."""
    row = tl.program_id(0).to(tl.int64) * N
    carry = tl.sum(tl.zeros([BLOCK], dtype=tl.int32), axis=0) - SHIFT
    for start in range(0, N, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        ok = offs < N
        x = tl.load(X + row + offs, mask=ok, other=0).to(tl.int32)
        tl.store(OUT + row + offs, tl.cumsum(x, axis=0) + carry, mask=ok)
        carry += tl.sum(x, axis=0)


def row_cumsum(x: torch.Tensor, shift: int = 0) -> torch.Tensor:
    """``torch.cumsum(x, -1, dtype=int32) - shift`` for a bool/int tensor. On CUDA (or under
    ``TRITON_INTERPRET=1``) one Triton program per row, one launch: torch's innermost-dim integer
    scan takes ~0.1 ms per call on rows of 30-70k tokens. The token layout is built for all heads at
    once, so there are enough rows (``B·H``) to fill the GPU."""
    if not (x.is_cuda or interpreting()) or x.numel() == 0:
        return torch.cumsum(x, -1, dtype=torch.int32) - shift
    x = x.contiguous()
    out = torch.empty(x.shape, dtype=torch.int32, device=x.device)
    N = x.shape[-1]
    BLOCK = 64 if interpreting() else 4096
    _row_cumsum_kernel[(x.numel() // N,)](x, out, N, shift, BLOCK=BLOCK, num_warps=8)
    return out


def pack_kept(kept: torch.Tensor, rank: torch.Tensor | None = None) -> torch.Tensor:
    """Indices of the True entries of ``kept`` (B, H, N), ascending, packed to the front; int32 (B, H, N).

    ``rank`` (optional): ``cumsum(kept) - 1`` if the caller has it. Entries past the kept count are
    unspecified.
    """
    B, H, N = kept.shape
    if rank is None:
        rank = row_cumsum(kept, 1)                                      # (B, H, N)
    dest = torch.where(kept, rank, N).long()                            # non-kept -> dump slot N
    packed = torch.empty((B, H, N + 1), dtype=torch.int32, device=kept.device)
    ar = torch.arange(N, dtype=torch.int32, device=kept.device).expand(B, H, N)
    packed.scatter_(2, dest, ar)
    return packed[..., :N]


class TokenPlanLayout:
    """Device-side layout of a token plan (everything the kernels read, for all heads at once; used by
    the varlen Triton path and by the compaction path), built without host syncs except ``mk`` (the
    largest kept-key count) when ``lengths`` does not bring it."""

    def __init__(self, q_src: torch.Tensor, k_src: torch.Tensor, lengths=None):
        B, H, N = q_src.shape
        ar = torch.arange(N, dtype=q_src.dtype, device=q_src.device)
        kept_q, kept_k = q_src == ar, k_src == ar                       # (B, H, N)
        if lengths is None:
            lq, lk, mk = kept_q.sum(-1, dtype=torch.int32), kept_k.sum(-1, dtype=torch.int32), None
        else:  # (lq, lk, mq, mk) from the dispatcher, which already paid the host sync
            lq, lk, _, mk = lengths
        self.lq = lq.reshape(B * H).contiguous()                        # (B*H,) int32
        self.lk = lk.reshape(B * H).contiguous()                        # (B*H,) int32
        self.rank_q = row_cumsum(kept_q, 1)                             # (B, H, N) rank among kept queries
        self.idx_q = pack_kept(kept_q, self.rank_q).contiguous()        # (B, H, N)
        self.idx_k = pack_kept(kept_k).contiguous()                     # (B, H, N)
        k_long = k_src.long()
        self.count = torch.zeros((B, H, N), dtype=torch.int32, device=q_src.device)
        self.count.scatter_add_(2, k_long, torch.ones_like(self.count))  # group size at each source
        self.start = row_cumsum(self.count) - self.count               # first slot in perm
        self.perm = torch.argsort(k_src, dim=-1, stable=True).to(torch.int32)  # keys grouped by source
        self.mk = int(self.lk.max()) if mk is None else int(mk)       # the one host sync
        self.q_src = q_src.int().contiguous()
        self.shape = (B, H, N)

    @property
    def order(self) -> torch.Tensor:
        """(B*H,) int32 heads by kept pairs, most first (the varlen attention kernel's launch order;
        the compaction path does not need it)."""
        return torch.argsort(self.lq.long() * self.lk.long(), descending=True).to(torch.int32)


def merge_keys_torch(v, k, k_src, layout: TokenPlanLayout, key_bias=None):
    """Torch twin of ``_merge_keys_kernel``: ``(vm (B,H,Mk,D), kc (B,H,Mk,D), bias (B,H,Mk) log2 units)``.

    Rows past a head's kept-key count are zero (the kernel leaves them unwritten).
    """
    B, H, N = layout.shape
    D, mk = v.shape[-1], layout.mk
    idx = layout.idx_k[..., :mk].long()                                 # (B, H, Mk)
    valid = torch.arange(mk, device=v.device) < layout.lk.view(B, H, 1)  # (B, H, Mk)
    idx = torch.where(valid, idx, torch.zeros_like(idx))
    vsum = torch.zeros((B, H, N, D), dtype=torch.float32, device=v.device)
    vsum.scatter_add_(2, k_src.long()[..., None].expand(B, H, N, D), v.float())
    cnt = layout.count.gather(2, idx).clamp_min(1).float()              # (B, H, Mk)
    vm = vsum.gather(2, idx[..., None].expand(B, H, mk, D)) / cnt[..., None]
    kc = k.gather(2, idx[..., None].expand(B, H, mk, D))
    bias = cnt.log()
    if key_bias is not None:
        bias = bias + key_bias.float()[:, None, :].expand(B, H, N).gather(2, idx)
    keep = valid[..., None]
    return (torch.where(keep, vm, 0).to(v.dtype), torch.where(keep, kc, 0),
            torch.where(valid, bias * LOG2E, 0))


# ----------------------------------------------------------------------------------------------
# launchers


def _check_device(*tensors):
    for t in tensors:
        if not (t.is_cuda or interpreting()):
            raise value_error("device", t.device, "the Triton kernels need CUDA tensors (or TRITON_INTERPRET=1)",
                              "use timeripple.kernels.token_attention, which falls back to torch")


def _last_dim_contiguous(x):
    return x if x.stride(-1) == 1 else x.contiguous()


def merge_keys(v, k, layout: TokenPlanLayout, key_bias=None, *, store_k=False):
    """Launch ``_merge_keys_kernel``: merged ``v'`` (B,H,Mk,D), compacted ``k`` (if ``store_k``, else
    None) and the bias (B,H,Mk) float32 in log2 units. Rows past a head's kept count are unwritten."""
    B, H, N = layout.shape
    D, mk = v.shape[-1], layout.mk
    _check_device(v, k)
    v, k = _last_dim_contiguous(v), _last_dim_contiguous(k)
    vm = torch.empty((B, H, mk, D), dtype=v.dtype, device=v.device)
    kc = torch.empty((B, H, mk, D), dtype=k.dtype, device=k.device) if store_k else vm
    bias = torch.empty((B, H, mk), dtype=torch.float32, device=v.device)
    kb = key_bias if key_bias is not None else bias  # dummy pointer when absent
    BLOCK_G = 16 if interpreting() else 64
    grid = (triton.cdiv(max(mk, 1), BLOCK_G), B * H)
    _merge_keys_kernel[grid](
        v, k, layout.idx_k, layout.lk, layout.count, layout.start, layout.perm, kb, vm, kc, bias,
        v.stride(0), v.stride(1), v.stride(2), k.stride(0), k.stride(1), k.stride(2),
        H, N, mk,
        HAS_KEY_BIAS=key_bias is not None, STORE_K=store_k, HEAD_DIM=D, BLOCK_G=BLOCK_G,
        num_warps=4,
    )
    return vm, (kc if store_k else None), bias


def attend_kept(q, k, vm, bias, layout: TokenPlanLayout, out, *, scale, kc=None):
    """Launch ``_token_attn_kernel``: write the kept query rows of ``out`` (B,H,N,D). ``k`` is read
    through ``layout.idx_k`` unless the compacted ``kc`` (B,H,Mk,D) is given."""
    B, H, N = layout.shape
    D = q.shape[-1]
    _check_device(q, k, vm, out)
    q, k = _last_dim_contiguous(q), _last_dim_contiguous(k)
    gather = kc is None
    grid = lambda meta: (triton.cdiv(N, meta["BLOCK_M"]), B * H)  # noqa: E731
    _token_attn_kernel[grid](
        q, k if gather else kc, vm, bias, layout.idx_q, layout.idx_k, layout.lq, layout.lk, layout.order, out,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        H, N, layout.mk, scale * LOG2E, 1 << max(N - 1, 0).bit_length(),
        GATHER_K=gather, IEEE=q.dtype == torch.float32,
        UPCAST=interpreting() and q.dtype == torch.bfloat16, HEAD_DIM=D,
    )
    return out


def scatter_rows(out, q_src):
    """Launch ``_scatter_rows_kernel``: ``out[b,h,i] = out[b,h,q_src[b,h,i]]`` for reused rows, in place."""
    B, H, N, D = out.shape
    _check_device(out, q_src)
    BLOCK_S = 16 if interpreting() else 64
    _scatter_rows_kernel[(triton.cdiv(N, BLOCK_S), B * H)](
        out, q_src.int().contiguous(), out.stride(0), out.stride(1), out.stride(2), H, N,
        HEAD_DIM=D, BLOCK_S=BLOCK_S, num_warps=4,
    )
    return out


def token_attention_triton(q, k, v, q_src, k_src, *, scale=None, key_bias=None, gather_k=True, lengths=None):
    """Token attention with the Triton kernels (CUDA, or CPU under ``TRITON_INTERPRET=1``).

    Same contract as ``reference.token_attention_ref``; head dim 64 or 128, fp16/bf16/fp32.
    ``gather_k=False`` materialises the compacted keys instead of reading them through the index list.
    ``lengths``: optional ``(lq, lk, mq, mk)`` (int32 ``(B, H)`` kept counts and their maxima) if the
    caller already has them (saves the host sync).
    """
    check_token_inputs(q, k, v, q_src, k_src)
    B, H, N, D = q.shape
    if D not in (64, 128):
        raise value_error("q.shape[-1]", D, "the Triton kernels support head dims 64 and 128",
                          "use timeripple.kernels.token_attention, which falls back to torch")
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise value_error("q.dtype", q.dtype, "must be fp16, bf16 or fp32", "cast q, k, v")
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    kb = normalize_key_bias(key_bias, B, N, q.device)
    kb = kb.float() if kb is not None else None
    out = torch.empty((B, H, N, D), dtype=q.dtype, device=q.device)
    if N == 0:
        return out
    layout = TokenPlanLayout(q_src.int(), k_src.int(), lengths)
    vm, kc, bias = merge_keys(v, k, layout, kb, store_k=not gather_k)
    attend_kept(q, k, vm, bias, layout, out, scale=scale, kc=kc)
    return scatter_rows(out, layout.q_src)
