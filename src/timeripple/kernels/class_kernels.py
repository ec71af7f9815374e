"""Triton kernels of the count-class path (``class_attention.py``): the log-sum-exp combine of one to eight
classes with the copy of every output row, the mean row of a key pair, and the packing of demoted
key lists. Launchers and their contracts are in ``class_attention.py``."""

import triton
import triton.language as tl


@triton.jit
def _online_class(O, L, LOGW, LOGP, ro, rl, offs_d, ok, ok2, m, den, acc):
    """Fold one class's rows ``(o, lse + log w)`` into the running ``(max, weight sum, weighted o)``
    (``ro``/``rl``: element offsets of the rows in ``o`` and in the log-sum-exp). ``LOGP``: log of the
    class's zero padding keys (``-inf``: none): each added ``e^0`` to its softmax denominator and nothing to
    its numerator, so the weight sum takes ``w (e^lse - pads) / e^lse`` (clamped at 0) and ``o`` keeps ``w``."""
    lw = tl.load(L + rl, mask=ok, other=float("-inf")) + LOGW
    m_new = tl.maximum(m, lw)
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    keep = tl.exp(m - m_safe)                                        # rescale of what was summed
    w = tl.exp(lw - m_safe)
    wp = tl.where(ok, tl.exp(LOGW + LOGP - m_safe), 0.0)            # the padding's share of w
    o = tl.load(O + ro[:, None] + offs_d[None, :], mask=ok2, other=0.0).to(tl.float32)
    dw = w - wp
    dw = tl.where(dw < 0.0, 0.0, dw)                                 # rounding below 0; NaN stays NaN
    return m_new, den * keep + dw, acc * keep[:, None] + o * w[:, None]


@triton.jit
def combine_classes_kernel(
    O0, L0, O1, L1, O2, L2, O3, L3, O4, L4, O5, L5, O6, L6, O7, L7,
    W0, W1, W2, W3, W4, W5, W6, W7, P0, P1, P2, P3, P4, P5, P6, P7, Q_SRC, RANK_Q, OUT, stride_ob, stride_oh, stride_on,
    stride_cb, stride_ch, stride_cm, stride_lb, stride_lh, H, HC, H0, N, MQ,
    NC: tl.constexpr, HEAD_DIM: tl.constexpr, DH: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """Every row of ``OUT`` for the chunk's heads from its kept source's compacted row ``r``: one class's
    ``o`` (``NC == 1``, its log-sum-exp not read), or ``Σ_c w_c e^{lse_c} o_c / Σ_c w_c e^{lse_c}`` over ``NC``
    (2 to 8) classes in one pass (online rescaling; ``W`` holds ``log w``, ``P`` the log of each class's zero
    padding keys, whose ``e^0`` each is taken out of the denominator): zeros where no class has a key,
    NaN where a log-sum-exp is NaN (a poisoned plan, non-finite input). Slots past ``NC`` are not read. The
    classes' ``o`` ``(B, HC, MQ, D)`` share the strides ``stride_c*`` (as SDPA returns them, e.g. of a
    transposed ``q``: no copy), their log-sum-exps ``(B, HC, MQ)`` the strides ``stride_l*`` (rows contiguous)."""
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
    hh = (bh % HC).to(tl.int64)
    ro = b.to(tl.int64) * stride_cb + hh * stride_ch + rank.to(tl.int64) * stride_cm  # (S,) compacted row of o
    rl = b.to(tl.int64) * stride_lb + hh * stride_lh + rank                           # ... of the lse
    if NC == 1:
        o = tl.load(O0 + ro[:, None] + offs_d[None, :], mask=ok2, other=0.0).to(tl.float32)
    else:
        m = tl.full([BLOCK_S], float("-inf"), dtype=tl.float32)
        den = tl.zeros([BLOCK_S], dtype=tl.float32)
        acc = tl.zeros([BLOCK_S, DH], dtype=tl.float32)
        m, den, acc = _online_class(O0, L0, W0, P0, ro, rl, offs_d, ok, ok2, m, den, acc)
        m, den, acc = _online_class(O1, L1, W1, P1, ro, rl, offs_d, ok, ok2, m, den, acc)
        if NC > 2:
            m, den, acc = _online_class(O2, L2, W2, P2, ro, rl, offs_d, ok, ok2, m, den, acc)
        if NC > 3:
            m, den, acc = _online_class(O3, L3, W3, P3, ro, rl, offs_d, ok, ok2, m, den, acc)
        if NC > 4:
            m, den, acc = _online_class(O4, L4, W4, P4, ro, rl, offs_d, ok, ok2, m, den, acc)
        if NC > 5:
            m, den, acc = _online_class(O5, L5, W5, P5, ro, rl, offs_d, ok, ok2, m, den, acc)
        if NC > 6:
            m, den, acc = _online_class(O6, L6, W6, P6, ro, rl, offs_d, ok, ok2, m, den, acc)
        if NC > 7:
            m, den, acc = _online_class(O7, L7, W7, P7, ro, rl, offs_d, ok, ok2, m, den, acc)
        o = tl.where(den[:, None] > 0.0, acc / tl.where(den > 0.0, den, 1.0)[:, None], 0.0)
        o = o + (den - den)[:, None]  # 0, or NaN where a log-sum-exp was NaN
    o_base = OUT + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh
    tl.store(o_base + offs_i[:, None].to(tl.int64) * stride_on + offs_d[None, :], o.to(OUT.dtype.element_ty),
             mask=ok2)


@triton.jit
def pair_mean_kernel(
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


@triton.jit
def pack_demoted_kernel(LABEL, SIZES, OFFSETS, SLOTS, OUT, N, NS: tl.constexpr, BLOCK: tl.constexpr):
    """The concatenated key list of one (b, h) row with demotion (one program per row, walking the row in
    blocks with running counts): a key of count ``c`` with a class of its own (``SIZES[c] > 0``, slot
    ``SLOTS[c]`` of ``NS``) goes to ``OFFSETS[c] + rank`` while its rank among the row's count-c keys is
    below ``SIZES[c]``; every other kept key (``LABEL > 0``) goes to class 1 at the front, ``LABEL`` copies
    of it. Token order inside each class. ``NS`` may exceed the slots in use (they hold no key)."""
    row = tl.program_id(0).to(tl.int64) * N
    slot_ids = tl.arange(0, 8)
    carries = tl.zeros([8], dtype=tl.int32)                           # keys of each slot seen so far
    carry1 = tl.sum(tl.zeros([BLOCK], dtype=tl.int32), axis=0)        # class-1 slots used so far
    for start in range(0, N, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        ok = offs < N
        lab = tl.load(LABEL + row + offs, mask=ok, other=0)
        size = tl.load(SIZES + lab, mask=ok, other=0)
        base = tl.load(OFFSETS + lab, mask=ok, other=0)
        slot = tl.load(SLOTS + lab, mask=ok, other=0)
        rank = tl.zeros([BLOCK], dtype=tl.int32)
        for sl in tl.static_range(1, NS + 1):
            member = (slot == sl) & ok
            m = member.to(tl.int32)
            before = tl.sum(tl.where(slot_ids == sl, carries, 0), axis=0)
            rank = tl.where(member, before + tl.cumsum(m, axis=0) - 1, rank)
            carries += tl.where(slot_ids == sl, tl.sum(m, axis=0), 0)
        own = (slot > 0) & (rank < size) & ok
        tl.store(OUT + row + base + rank, offs, mask=own)
        mult = tl.where(own | ~ok, 0, lab)                            # copies of each key in class 1
        pos = carry1 + tl.cumsum(mult, axis=0) - mult
        for t in range(0, tl.max(mult, axis=0)):
            tl.store(OUT + row + pos + t, offs, mask=mult > t)
        carry1 += tl.sum(mult, axis=0)
