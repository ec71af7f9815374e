"""Token attention without a per-key bias: kept keys split by merge count, one bias-free SDPA per class.

A merged key of count ``c`` stands for ``c`` keys (``Σ_group e^{q·k_j} v_j ≈ c·e^{q·k_s}·mean(v)``), so
today's paths add ``log(count)`` to its score, which keeps cuDNN off its fastest kernel (about 3/4 of
its bias-free rate; docs/kernels.md). Inside one class every key has the same count, so the weight is a
constant that moves out of the softmax:

    out = Σ_c e^{lse_c + log c} o_c / Σ_c e^{lse_c + log c},     (o_c, lse_c) = SDPA(q, K_c, V_c)

where ``K_c, V_c`` are the class's representative keys and mean values and ``lse_c`` the log-sum-exp of
the class's scores. This is exact (no approximation beyond the token plan's). Each class is one batched
SDPA call with static shapes when every (batch, head) has the same number of keys in that class:
budget mode with keys merged in pairs (``token_keys="pairs"``) always does (count-1 and count-2 keys,
the same number of pairs in every head). Other plans (today's chains, threshold mode) have class
sizes that differ per head; they run the compaction path (``compact_attention``), which
:func:`class_layout` tells the dispatcher.

Key-padding masks (``key_bias`` of 0 / ``-inf``) drop the masked keys from every class; other finite
biases are not supported here (the dispatcher falls back). The LSE comes from
``aten._scaled_dot_product_cudnn_attention`` on CUDA (fp16/bf16), else from the flash op, else from
float32 torch (CPU, tests).
"""

from __future__ import annotations

import logging
import math

import torch
import triton
import triton.language as tl

from .token_attention_compact import PAD_LIMIT, gather_rows_kernel, merge_values_kernel
from .token_attention_triton import pack_kept, row_cumsum
from .triton_common import interpreting

logger = logging.getLogger(__name__)

# compacted buffers of one chunk of heads, as a share of q's bytes. 0.18 (the compaction path's share)
# ran Wan2.1-1.3B (12 heads) one head per chunk: 5.07 ms at 75% pairs against 3.07 ms at 1.0 and 2.99 ms
# at 4.0 (H200, profile_pairs.py); HunyuanVideo 25.2 / 24.4 / 24.7 ms. 1.0 adds up to q's bytes to the
# attention's peak (docs/kernels.md), a small share of a transformer forward's peak.
CLASS_CHUNK_SHARE = 1.0
# the largest merge count that gets its own class (window 2 over three axes merges at most 8 keys)
MAX_CLASS = 64
_warned: set = set()


def _warn_once(reason: str) -> None:
    if reason not in _warned:
        _warned.add(reason)
        logger.warning("timeripple count-class attention: %s", reason)


def sdpa_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float):
    """Plain attention and its log-sum-exp: ``(out (B, H, M, D) in q's dtype, lse (B, H, M) float32)``.

    ``lse`` is ``log Σ_j exp(scale·q·k_j)`` (natural log). CUDA fp16/bf16: cuDNN's op (the fastest SDPA
    on Hopper, measured), else the flash op; otherwise (CPU, fp32) float32 torch.
    """
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and not interpreting():
        aten = torch.ops.aten
        try:
            out, lse = aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, False, False,
                                                                 scale=scale)[:2]
            return out, lse.reshape(q.shape[:3])
        except RuntimeError as exc:  # cuDNN missing or shape unsupported on this build
            _warn_once(f"cuDNN attention with log-sum-exp failed ({exc!r:.120}); using the flash op")
        try:
            out, lse = aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False, scale=scale)[:2]
            return out, lse.reshape(q.shape[:3])
        except RuntimeError as exc:
            _warn_once(f"flash attention with log-sum-exp failed ({exc!r:.120}); using float32 torch")
    s = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale  # (B, H, M, Mk)
    lse = torch.logsumexp(s, dim=-1)
    out = torch.matmul(torch.softmax(s, dim=-1), v.float())
    return out.to(q.dtype), lse


@triton.jit
def _combine_finish_kernel(
    O1, L1, O2, L2, Q_SRC, RANK_Q, OUT, stride_ob, stride_oh, stride_on, H, HC, H0, N, MQ, LOGW1, LOGW2,
    HAS2: tl.constexpr, HEAD_DIM: tl.constexpr, DH: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """Every row of ``OUT`` for the chunk's heads from its kept source's compacted row ``r``: one class
    (``o1``), or two combined through their log-sum-exps ``l + log w`` (rows with no key get zeros)."""
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // HC
    h = H0 + bh % HC
    offs_i = pid * BLOCK_S + tl.arange(0, BLOCK_S)                   # (S,) token index
    offs_d = tl.arange(0, DH)
    ok = offs_i < N
    ok2 = ok[:, None] & (offs_d[None, :] < HEAD_DIM)
    row = (b.to(tl.int64) * H + h) * N                               # row of the (B, H, N) layout
    src = tl.load(Q_SRC + row + offs_i, mask=ok, other=0)
    rank = tl.minimum(tl.load(RANK_Q + row + src, mask=ok, other=0), MQ - 1)  # in range even on a bad plan
    r = bh.to(tl.int64) * MQ + rank                                  # (S,) compacted row
    o = tl.load(O1 + r[:, None] * HEAD_DIM + offs_d[None, :], mask=ok2, other=0.0).to(tl.float32)
    if HAS2:
        l1 = tl.load(L1 + r, mask=ok, other=float("-inf")) + LOGW1
        l2 = tl.load(L2 + r, mask=ok, other=float("-inf")) + LOGW2
        m = tl.maximum(l1, l2)
        m_safe = tl.where(m == float("-inf"), 0.0, m)
        w1 = tl.exp(l1 - m_safe)
        w2 = tl.exp(l2 - m_safe)
        den = w1 + w2
        o2 = tl.load(O2 + r[:, None] * HEAD_DIM + offs_d[None, :], mask=ok2, other=0.0).to(tl.float32)
        # no key at all: zeros; a NaN log-sum-exp (a poisoned plan, non-finite input): NaN
        o = tl.where(den[:, None] > 0.0,
                     (o * w1[:, None] + o2 * w2[:, None]) / tl.where(den > 0.0, den, 1.0)[:, None], 0.0)
        o = o + (den - den)[:, None]  # 0, or NaN where den is NaN
    o_base = OUT + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh
    tl.store(o_base + offs_i[:, None].to(tl.int64) * stride_on + offs_d[None, :], o.to(OUT.dtype.element_ty),
             mask=ok2)


@triton.jit
def _pair_mean_kernel(
    X, IDX, PARTNER, OUT, stride_xb, stride_xh, stride_xn, H, HC, H0, N, M,
    HEAD_DIM: tl.constexpr, DP: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """``OUT[b, h - H0, r] = (X[s] + X[PARTNER[s]]) / 2`` with ``s = IDX[b, h, r]``: the mean row of a
    key merged with at most one partner (``PARTNER[s] == s`` for a key merged with none: its own row)."""
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // HC
    h = H0 + bh % HC
    gbh = (b * H + h).to(tl.int64)
    offs_r = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, DP)
    in_m = offs_r < M
    ok = in_m[:, None] & (offs_d[None, :] < HEAD_DIM)
    s = tl.load(IDX + gbh * N + offs_r, mask=in_m, other=0)
    p = tl.load(PARTNER + gbh * N + s, mask=in_m, other=0)
    base = X + b.to(tl.int64) * stride_xb + h.to(tl.int64) * stride_xh
    a = tl.load(base + s[:, None].to(tl.int64) * stride_xn + offs_d[None, :], mask=ok, other=0.0).to(tl.float32)
    c = tl.load(base + p[:, None].to(tl.int64) * stride_xn + offs_d[None, :], mask=ok, other=0.0).to(tl.float32)
    tl.store(OUT + (bh.to(tl.int64) * M + offs_r[:, None]) * HEAD_DIM + offs_d[None, :],
             ((a + c) * 0.5).to(OUT.dtype.element_ty), mask=ok)


class ClassLayout:
    """Per-class packed key lists of a token plan (for all heads), or the reason the class path cannot
    run it. Built with one host sync (class sizes and kept query lengths)."""

    def __init__(self, q_src, k_src, key_bias=None, expected=None):
        B, H, N = q_src.shape
        self.reason = None
        self.valid = None
        ar = torch.arange(N, dtype=q_src.dtype, device=q_src.device)
        kept_q = q_src == ar
        lq = kept_q.sum(-1, dtype=torch.int32)                          # (B, H)
        lk = (k_src == ar).sum(-1, dtype=torch.int32)                   # (B, H)
        count = torch.zeros((B, H, N), dtype=torch.int32, device=q_src.device)
        count.scatter_add_(2, k_src.long(), torch.ones_like(count))    # group size at each kept key
        label = count
        if key_bias is not None:                                        # masked keys join no class
            label = torch.where(torch.isfinite(key_bias)[:, None, :], count, 0)
        label = label.clamp_max(MAX_CLASS + 1)
        hist = torch.zeros((B * H, MAX_CLASS + 2), dtype=torch.int32, device=q_src.device)
        hist.scatter_add_(1, label.reshape(B * H, N).long(), torch.ones_like(label).reshape(B * H, N))
        other_bias = torch.zeros(1, dtype=torch.int32, device=q_src.device)
        if key_bias is not None:  # a float mask (not 0 / -inf) cannot move into a class constant
            other_bias = ((key_bias != 0) & (key_bias != float("-inf"))).any().int().reshape(1)
        if expected is not None:  # sizes known on the host: no sync; the plan is checked on the device
            self._expected(expected, lq, hist, other_bias, kept_q, label, count, k_src, q_src)
            return
        extra = torch.stack([lq.amax(), lq.sum(), lk.amax(), (lq.long() * lk.long()).sum()]).double()
        host = torch.cat([hist.amax(0).double(), hist.amin(0).double(), extra, other_bias.double()])
        host = [int(x) for x in host.tolist()]  # the one host sync
        hmax, hmin = host[: MAX_CLASS + 2], host[MAX_CLASS + 2 : 2 * MAX_CLASS + 4]
        self.mq, lq_sum, mk, real = (int(x) for x in host[-5:-1])
        # for the dispatcher's fallback (compaction / varlen): kept lengths and padded-pairs ratio
        self.lengths = (lq, lk, self.mq, mk)
        self.pad_ratio = B * H * self.mq * mk / max(real, 1)
        if host[-1]:
            self.reason = "a key bias other than 0 / -inf (a float attention mask)"
            return
        if hmax[MAX_CLASS + 1]:
            self.reason = f"a key merges more than {MAX_CLASS} tokens"
            return
        self.classes = [c for c in range(1, MAX_CLASS + 1) if hmax[c] > 0]
        if not self.classes:
            self.reason = "every key is masked"
            return
        unequal = [c for c in self.classes if hmax[c] != hmin[c]]
        if unequal:
            self.reason = f"class sizes differ between heads (counts {unequal[:4]})"
            return
        if len(self.classes) > 2:
            self.reason = f"{len(self.classes)} count classes (at most 2 run fused)"
            return
        if B * H * self.mq > PAD_LIMIT * max(lq_sum, 1):
            self.reason = "kept query lengths differ too much between heads"
            return
        self.sizes = [hmax[c] for c in self.classes]
        self._finish(lq, kept_q, label, count, k_src, q_src)

    def _expected(self, expected, lq, hist, other_bias, kept_q, label, count, k_src, q_src):
        """Static sizes ``(mq, {count: size})`` from the caller (budget mode): ``valid`` is a 0-d device
        tensor that is False when the plan does not have them (non-finite scores); the attention then
        returns NaN rather than a result built on wrong sizes."""
        self.mq, sizes = int(expected[0]), {int(c): int(n) for c, n in expected[1].items() if n > 0}
        self.classes = sorted(sizes)
        self.sizes = [sizes[c] for c in self.classes]
        slot = torch.arange(hist.shape[1], dtype=torch.int32, device=hist.device)
        want = torch.zeros_like(slot)
        for c, n in sizes.items():  # no `want[c] = n`: that copies a host scalar (breaks CUDA-graph capture)
            want = torch.where(slot == c, n, want)
        want[0] = hist[0, 0]  # the non-kept slot is free
        self.valid = (hist[:, 1:] == want[1:]).all() & (lq == self.mq).all() & (other_bias == 0).all()
        self.lengths = None
        self.pad_ratio = 1.0
        self._finish(lq, kept_q, label, count, k_src, q_src)

    def _finish(self, lq, kept_q, label, count, k_src, q_src):
        B, H, N = q_src.shape
        self.lq = lq.reshape(B * H).contiguous()
        self.rank_q = row_cumsum(kept_q, 1)                             # (B, H, N) rank among kept queries
        self.idx_q = pack_kept(kept_q, self.rank_q).contiguous()
        self.idx = [pack_kept(label == c).contiguous() for c in self.classes]
        self.lens = [torch.full((B * H,), n, dtype=torch.int32, device=q_src.device) for n in self.sizes]
        self.partner = None
        if max(self.classes) == 2:  # pairs: a merged key's partner is the largest index of its group
            ar = torch.arange(N, dtype=torch.int32, device=q_src.device).expand(B, H, N)
            self.partner = torch.zeros((B, H, N), dtype=torch.int32, device=q_src.device).scatter_reduce_(
                2, k_src.long(), ar, "amax", include_self=False).contiguous()
        elif max(self.classes) > 2:  # larger groups: contiguous in perm (what the merge kernel reads)
            self.count = count
            self.start = row_cumsum(count) - count
            self.perm = torch.argsort(k_src, dim=-1, stable=True).to(torch.int32)
        self.q_src = q_src.int().contiguous()


def class_layout(q_src, k_src, key_bias=None, expected=None) -> ClassLayout:
    """The :class:`ClassLayout` of a plan; ``.reason`` is None when the class path can run it.

    ``expected`` (optional): ``(kept queries per head, {merge count: keys per head})`` known on the
    host (budget mode, :func:`expected_class_sizes`): no host sync, checked on the device."""
    return ClassLayout(q_src.int().contiguous(), k_src.int().contiguous(), key_bias, expected)


def expected_class_sizes(n_tokens, n_video, eligible_q, budget_q, pairs, key_budget):
    """Host-side sizes of a budget plan with keys in pairs: ``(kept queries, {1: singles, 2: pairs})``
    per head, when every score is finite (the rounding of ``detect.budget_select``)."""
    reuse_q = int(torch.round(torch.tensor(eligible_q, dtype=torch.float64) * budget_q))
    p = int(torch.round(torch.tensor(pairs, dtype=torch.float64) * key_budget))
    return n_tokens - reuse_q, {1: n_tokens - 2 * p, 2: p}


def token_attention_classes(q, k, v, q_src, k_src, *, scale, key_bias=None, key_repr="source", layout=None,
                            chunk_share=None):
    """Token attention (contract of ``reference.token_attention_ref``) by count classes, bias-free.

    Args:
        q, k, v: ``(B, H, N, D)``, last dim contiguous. q_src, k_src: int32 ``(B, H, N)`` plan.
        scale (`float`): score scale. key_bias: float32 ``(B, N)`` of 0 / ``-inf`` or None.
        key_repr (`str`): ``"source"`` (a merged key is its source's ``k``) or ``"mean"`` (the group mean).
        layout (:class:`ClassLayout`, *optional*): prebuilt; its ``reason`` must be None.
        chunk_share (`float`, *optional*): compacted buffers of one chunk of heads <= this share of q's
            bytes (default ``CLASS_CHUNK_SHARE``).

    Raises:
        ValueError: when the plan cannot run here (``layout.reason``); use the dispatcher instead.
    """
    from .._validation import value_error

    B, H, N, D = q.shape
    out = torch.empty((B, H, N, D), dtype=q.dtype, device=q.device)
    if N == 0:
        return out
    lay = class_layout(q_src, k_src, key_bias) if layout is None else layout
    if lay.reason is not None:
        raise value_error("token plan", "count classes", f"the class path cannot run it: {lay.reason}",
                          "call timeripple.kernels.token_attention, which picks a path that can")
    mq, sizes = lay.mq, lay.sizes
    chunk_share = CLASS_CHUNK_SHARE if chunk_share is None else chunk_share
    per_head = B * (mq * D * (1 + len(sizes)) + sum(sizes) * 2 * D) * q.element_size()
    hc = max(1, min(H, int(chunk_share * B * H * N * D * q.element_size() // max(per_head, 1))))
    interp = interpreting()
    BLOCK = 16 if interp else 64
    DP = triton.next_power_of_2(D)
    for h0 in range(0, H, hc):
        nh = min(H, h0 + hc) - h0
        qc = torch.empty((B, nh, mq, D), dtype=q.dtype, device=q.device)
        gather_rows_kernel[(triton.cdiv(mq, BLOCK), B * nh)](
            q, lay.idx_q, lay.lq, qc, q.stride(0), q.stride(1), q.stride(2), H, nh, h0, N, mq,
            HEAD_DIM=D, DOUT=D, DP=DP, BLOCK_R=BLOCK, num_warps=4,
        )
        results = []
        for c, n, idx, lens in zip(lay.classes, sizes, lay.idx, lay.lens):
            kc = torch.empty((B, nh, n, D), dtype=k.dtype, device=k.device)
            vc = torch.empty((B, nh, n, D), dtype=v.dtype, device=v.device)
            pairs = [(v, vc)] + ([(k, kc)] if key_repr == "mean" else [])
            if c == 1 or key_repr != "mean":
                gather_rows_kernel[(triton.cdiv(n, BLOCK), B * nh)](
                    k, idx, lens, kc, k.stride(0), k.stride(1), k.stride(2), H, nh, h0, N, n,
                    HEAD_DIM=D, DOUT=D, DP=DP, BLOCK_R=BLOCK, num_warps=4,
                )
                pairs = pairs[:1]
            if c == 1:
                gather_rows_kernel[(triton.cdiv(n, BLOCK), B * nh)](
                    v, idx, lens, vc, v.stride(0), v.stride(1), v.stride(2), H, nh, h0, N, n,
                    HEAD_DIM=D, DOUT=D, DP=DP, BLOCK_R=BLOCK, num_warps=4,
                )
            elif lay.partner is not None:  # pairs: (row + partner row) / 2, no sort of the plan
                for x, dst in pairs:
                    _pair_mean_kernel[(triton.cdiv(n, BLOCK), B * nh)](
                        x, idx, lay.partner, dst, x.stride(0), x.stride(1), x.stride(2), H, nh, h0, N, n,
                        HEAD_DIM=D, DP=DP, BLOCK_R=BLOCK, num_warps=4,
                    )
            else:  # mean of the group's rows (of v, and of k for key_repr="mean")
                g = lay
                dummy = torch.empty((B, nh, n), dtype=torch.float32, device=q.device)
                for x, dst in pairs:
                    merge_values_kernel[(triton.cdiv(n, BLOCK), B * nh)](
                        x, idx, lens, g.count, g.start, g.perm, dst, dst, dummy,
                        x.stride(0), x.stride(1), x.stride(2), H, nh, h0, N, n,
                        HAS_KB=False, WEIGHTED=False, HEAD_DIM=D, DOUT=D, DP=DP, BLOCK_G=BLOCK, num_warps=4,
                    )
            o, lse = sdpa_lse(qc, kc, vc, scale)  # (B, nh, Mq, D), (B, nh, Mq)
            if lay.valid is not None and not results:  # static sizes that the plan does not have: NaN out
                lse = lse + torch.where(lay.valid, 0.0, float("nan"))
            results.append((o.contiguous(), lse.contiguous(), math.log(c)))
            del kc, vc
        del qc
        if lay.valid is not None and len(results) == 1:  # one class: the LSE is not read, poison o
            o, lse, w = results[0]
            results[0] = (o + torch.where(lay.valid, 0.0, float("nan")).to(o.dtype), lse, w)
        (o1, l1, w1), (o2, l2, w2) = results[0], results[-1]
        _combine_finish_kernel[(triton.cdiv(N, BLOCK), B * nh)](
            o1, l1, o2, l2, lay.q_src, lay.rank_q, out, out.stride(0), out.stride(1), out.stride(2),
            H, nh, h0, N, mq, w1, w2, HAS2=len(results) == 2, HEAD_DIM=D, DH=DP, BLOCK_S=BLOCK, num_warps=4,
        )
        del results, o1, o2, l1, l2
    return out
