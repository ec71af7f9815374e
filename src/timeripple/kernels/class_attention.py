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
the same number of pairs in every head). Other plans (chains, a budget pooled over the heads, threshold
mode) have class sizes that differ per head. Each class ``c >= 2`` then keeps as many keys as its smallest
head has; a head's other count-c keys are *demoted*: each stands in class 1 as ``c`` copies of itself
(``c·e^{q·k}`` either way, still exact), so class 1 has the same size in every head too (every class covers
the same tokens in every head). Demotion adds keys (about 6% for the bundled plan at Wan2.1 and
HunyuanVideo, measured); :func:`class_layout` sends plans for which it (or query padding) adds more than
``PAD_LIMIT`` x the real pairs to the compaction path (``compact_attention``).

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

from .class_kernels import combine_classes_kernel, pack_demoted_kernel, pair_mean_kernel
from .token_attention_compact import PAD_LIMIT, gather_rows_kernel, merge_values_kernel
from .token_attention_triton import pack_kept, row_cumsum
from .triton_common import interpreting

logger = logging.getLogger(__name__)

# compacted buffers of one chunk of heads, as a share of q's bytes. 0.18 (the compaction path's share)
# ran Wan2.1-1.3B (12 heads) one head per chunk: 5.07 ms at 75% pairs against 3.07 ms at 1.0 and 2.99 ms
# at 4.0 (H200, profile_pairs.py); HunyuanVideo 25.2 / 24.4 / 24.7 ms. 1.0 adds up to q's bytes to the
# attention's peak (docs/kernels.md), a small share of a transformer forward's peak.
CLASS_CHUNK_SHARE = 1.0
# ... but never less than this many bytes: each chunk repeats every launch (about a dozen Triton kernels and
# one SDPA per class), and after the layout's host sync the GPU waits for them. The bundled plan at
# Wan2.1-1.3B (12 heads, 3 classes) ran 6 chunks of 2 heads at the share alone (H200, issue 10).
CLASS_CHUNK_FLOOR = 1 << 30
# the largest merge count that gets its own class (window 2 over three axes merges at most 8 keys)
MAX_CLASS = 64
# at most this many classes run as their own SDPA call (the combine kernel's slots)
MAX_FUSED_CLASSES = 8
# at most this many SDPA calls per chunk on the sync path (1 <= CLASS_CALLS <= MAX_FUSED_CLASSES): the classes
# c >= 2 that cover the most tokens keep their own call, the others are demoted (fewer, larger calls for more
# entries; benchmarks/experiments/class_knobs.py times the trade)
CLASS_CALLS = MAX_FUSED_CLASSES
# a class whose size differs between heads gets its own call only with at least this many keys in every
# head; below it, its keys join class 1 (each count-c key as c copies): one pass over q saved per class
MIN_CLASS_KEYS = 256
# False: plans whose class sizes differ between heads go to compaction, as before demotion (benchmarks)
DEMOTE = True
# 0: off. G > 1: every SDPA call of the sync path gets sizes on a grid of G, so that calls repeat shapes.
# PyTorch's cuDNN attention keys its plan cache on exact sizes and builds plans on every miss; the pooled
# plan's class sizes change with every call. Classes c >= 2 keep a multiple of G keys (the rest demoted:
# exact, each such key as c copies in class 1), which puts class 1 on N mod G + a multiple of G; kept query
# rows are padded up to a multiple of G (padding rows are computed and never read). Costs entries
# (at most (c - 1)(G - 1) per class and head, plus G - 1 query rows); not yet timed (BENCHMARKS.md round 5).
SIZE_GRID = 0
# 0: off. B > 0 (a power of two): every class's keys and the kept query rows of the sync path are padded up to
# a size bucket, B buckets per octave (never finer than BUCKET_MIN_STEP): calls repeat shapes, so cuDNN's
# plan cache hits across steps and layers. A class's padding keys are zero vectors with zero values: each
# adds exactly e^0 = 1 to the class's softmax denominator and nothing to its numerator, and the combine
# subtracts that known count (exact up to the float32 rounding of the log-sum-exp). Costs at most 1/B of
# the entries per class; a list that would outgrow its buffer (N rows a head) is not padded. 8, measured
# (BENCHMARKS.md round 6, real 50-step Wan2.1-1.3B loops on an H200): the first loop of a process, where
# cuDNN builds a plan for every size it has not met, took 3.4 s more than the next with 16 buckets and
# 0.4 s more with 8; the loops after it were equally fast (558 vs 559 ms a reuse step).
SIZE_BUCKETS = 8
BUCKET_MIN_STEP = 64
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


def size_bucket(n: torch.Tensor, buckets: int | None = None) -> torch.Tensor:
    """The bucket of each size (int64, same device; 0 stays 0): ``n`` rounded up to a multiple of
    ``max(BUCKET_MIN_STEP, 2^floor(log2 n) / buckets)``, ``buckets`` (default ``SIZE_BUCKETS``) per octave;
    ``n`` itself when buckets are off. Integer results on the host and the device alike."""
    buckets = SIZE_BUCKETS if buckets is None else buckets
    n = n.long()
    if buckets <= 0:
        return n
    octave = torch.floor(torch.log2(n.clamp_min(1).double())).long()
    shift = max(int(buckets).bit_length() - 1, 0)
    step = torch.pow(2, (octave - shift).clamp_min(0)).clamp_min(BUCKET_MIN_STEP)
    return torch.where(n > 0, (n + step - 1) // step * step, 0)


def size_bucket_int(n: int, buckets: int | None = None) -> int:
    """:func:`size_bucket` of one host integer, in integer arithmetic (the host's side of the same rule:
    the layout's host values must give the sizes the device computed)."""
    buckets = SIZE_BUCKETS if buckets is None else buckets
    if buckets <= 0 or n <= 0:
        return max(int(n), 0) if buckets > 0 else int(n)
    shift = max(int(buckets).bit_length() - 1, 0)
    step = max(BUCKET_MIN_STEP, 1 << max(int(n).bit_length() - 1 - shift, 0))
    return -(-int(n) // step) * step


def _padded_sizes(sizes: torch.Tensor, n1: torch.Tensor, capacity: int):
    """``(padded own sizes, padded class-1 size)`` (int64, on the device: no host value): the buckets, or the
    sizes themselves when the padded list would exceed ``capacity`` entries (:func:`_padded_sizes_host` on
    the host)."""
    padded, n1p = size_bucket(sizes), size_bucket(n1)
    fits = n1p + padded.sum() <= capacity
    return torch.where(fits, padded, sizes.long()), torch.where(fits, n1p, n1.long())


def _padded_sizes_host(sizes: list[int], n1: int, capacity: int):
    """:func:`_padded_sizes` on host integers."""
    padded, n1p = [size_bucket_int(n) for n in sizes], size_bucket_int(n1)
    return (padded, n1p) if n1p + sum(padded) <= capacity else (list(sizes), n1)


def _demotion_tables(hmin: torch.Tensor, hmax: torch.Tensor, tokens: torch.Tensor, capacity: int):
    """Per merge count (``(MAX_CLASS + 2,)`` int32, on the device, no host sync): ``sizes`` (keys per head of
    the classes ``c >= 2`` that run as their own SDPA call, else 0), ``offsets`` (where each such class
    starts in the concatenated key list; class 1 first) and ``slots`` (1, 2, ... in ascending count, 0 for
    class 1 and for demoted counts); and the list's length per head (0-d).

    A class ``c >= 2`` keeps as many keys as the head with the fewest has (``hmin``: every head has them).
    One that varies between heads and has fewer than ``MIN_CLASS_KEYS`` keys there joins class 1, and at most
    ``min(CLASS_CALLS, MAX_FUSED_CLASSES) - 1`` classes (the largest in tokens) keep their own call. A count-c
    key left out of its class stands in class 1 as c copies of itself, so class 1 has ``tokens - Σ c·sizes_c``
    keys in every head and every class is one static-shape call (exact).
    With ``SIZE_BUCKETS``, the classes' regions of the list have their padded sizes (``offsets`` and the total
    follow them); the last item holds class 1's real and padded sizes and the padded own sizes (the gaps)."""
    S = hmin.shape[0]
    c = torch.arange(S, device=hmin.device)
    own = (c >= 2) & (c < S - 1) & (hmin > 0) & ((hmin == hmax) | (hmin >= MIN_CLASS_KEYS))
    calls = max(1, min(CLASS_CALLS, MAX_FUSED_CLASSES))
    if S - 3 > calls - 1:  # more possible classes than calls (or combine slots): keep the largest
        top = torch.topk(torch.where(own, c * hmin, -1), calls - 1).indices
        own &= torch.zeros_like(own).scatter_(0, top, True)
    kept = hmin if SIZE_GRID <= 1 else hmin // SIZE_GRID * SIZE_GRID  # on the grid: demote the remainder
    own &= kept > 0
    sizes = torch.where(own, kept, 0).to(torch.int32)
    n1 = tokens - (c * sizes).sum()
    padded, n1p = _padded_sizes(sizes, n1, capacity)                   # size buckets (sizes when off)
    offsets = (n1p + torch.cumsum(padded, 0) - padded).to(torch.int32)  # class 1 at 0, then ascending counts
    slots = torch.where(own, torch.cumsum(own.int(), 0), 0).to(torch.int32)
    return sizes, offsets, slots, n1p + padded.sum(), (n1, n1p, padded)


def _host_values(known, capacity):
    """The layout's host read, computed on the host from known per-row values (``ClassLayout.rows`` of a
    layout whose read covered these rows): ``(host, tables)`` in the read's format, tables on the CPU."""
    hist = torch.tensor(known["hist"], dtype=torch.int64)           # (rows, S)
    lq, lk = torch.tensor(known["lq"], dtype=torch.int64), torch.tensor(known["lk"], dtype=torch.int64)
    weights = torch.arange(MAX_CLASS + 2)
    weights[-1] = 0
    tokens = (hist * weights).sum(1)
    tables = _demotion_tables(hist.amin(0), hist.amax(0), tokens.amax(), capacity)
    extra = torch.stack([lq.max(), lq.sum(), lk.max(), (lq * lk).sum(), tokens.max(), tokens.min()])
    host = hist.amax(0).tolist() + tables[0].tolist() + extra.tolist() + [int(known["other_bias"])]
    return host, tables


class ClassLayout:
    """Per-class packed key lists of a token plan (for all heads), or the reason the class path cannot
    run it. Built with one host sync (class sizes and kept query lengths)."""

    def __init__(self, q_src, k_src, key_bias=None, expected=None, prepare=None, known=None):
        B, H, N = q_src.shape
        self.reason = None
        self.valid = None
        self.prepared = None  # the merged keys and values of every class for all heads (sync path, `prepare`)
        self.gap, self.pads = None, None  # padding rows of the key list and zero keys per class (SIZE_BUCKETS)
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
        if known is None:  # ``known`` holds the rows' histograms and the bias check already (host values)
            hist = torch.zeros((B * H, MAX_CLASS + 2), dtype=torch.int32, device=q_src.device)
            hist.scatter_add_(1, label.reshape(B * H, N).long(), torch.ones_like(label).reshape(B * H, N))
            other_bias = torch.zeros(1, dtype=torch.int32, device=q_src.device)
            if key_bias is not None:  # a float mask (not 0 / -inf) cannot move into a class constant
                other_bias = ((key_bias != 0) & (key_bias != float("-inf"))).any().int().reshape(1)
        if expected is not None:  # sizes known on the host: no sync; the plan is checked on the device
            self._expected(expected, lq, hist, other_bias, kept_q, label, count, k_src, q_src)
            return
        # Everything that needs no host value is enqueued before the sync, so that the GPU runs it while the
        # host waits and the host has only the SDPA calls and the combine to launch after it (in a model the
        # GPU is idle from the sync until the next launch): the query ranks and list, the concatenated key
        # list of every class with demotion, and (``prepare``) the merged keys and values, in buffers of N
        # rows per head (a list never has more entries than tokens: each entry stands for >= 1 token).
        if known is None:
            c = torch.arange(MAX_CLASS + 2, device=q_src.device)
            weights = c * (c <= MAX_CLASS)  # the overflow slot counts no keys (no `weights[-1] = 0`: a host copy)
            tokens = (hist.long() * weights).sum(1)                     # (B*H,) unmasked keys covered
            hmax_d, hmin_d = hist.amax(0), hist.amin(0)
            self._tables = _demotion_tables(hmin_d, hmax_d, tokens.amax(), N)  # (sizes, offsets, slots, total, gaps)
        else:  # every host value from an earlier read (a group of rows of a read layout): no sync here
            host, tables = _host_values(known, N)
            self._tables = tuple(t.to(q_src.device, non_blocking=True) for t in tables[:4]) + (
                tuple(t.to(q_src.device, non_blocking=True) for t in tables[4]),)
        self.lq = lq.reshape(B * H).contiguous()
        self.rank_q = row_cumsum(kept_q, 1)                             # (B, H, N) rank among kept queries
        self.idx_q = pack_kept(kept_q, self.rank_q).contiguous()
        self.count, self.start = count, row_cumsum(count) - count       # groups are contiguous in perm
        self.perm = torch.argsort(k_src, dim=-1, stable=True).to(torch.int32)
        self.partner = None
        self.idx_all = self._pack_demoted(label)
        self.len_all = self._tables[3].to(torch.int32).expand(B * H).contiguous()
        self.gap = self._gap_mask(N) if SIZE_BUCKETS > 0 else None  # (N,) padding rows of the list
        if prepare is not None:
            k, v, key_repr = prepare
            self.prepared = _class_keys(k, v, self, self.idx_all, self.len_all, N, 0, H, key_repr, plain=False,
                                        block=16 if interpreting() else 64)
            if self.gap is not None:  # padding keys: zero k (score exactly 0) and zero v
                for x in self.prepared:
                    x.masked_fill_(self.gap[:, None], 0)
        S = MAX_CLASS + 2
        if known is None:
            extra = torch.stack([lq.amax(), lq.sum(), lk.amax(), (lq.long() * lk.long()).sum(), tokens.amax(),
                                 tokens.amin()]).double()
            rows = torch.cat([hist, lq.reshape(-1, 1), lk.reshape(-1, 1)], 1).double().reshape(-1)  # per (b, h)
            host = torch.cat([hmax_d.double(), self._tables[0].double(), extra, other_bias.double(), rows])
            host = [int(x) for x in host.tolist()]  # the one host sync
            rows, host = host[2 * S + 7 :], host[: 2 * S + 7]
            # per (batch, head) row: its histogram of merge counts, kept queries, kept keys (host values:
            # grouping the heads, kernels/head_groups.py, needs no other read)
            self.rows = dict(hist=[rows[r * (S + 2) : r * (S + 2) + S] for r in range(B * H)],
                             lq=rows[S :: S + 2], lk=rows[S + 1 :: S + 2], other_bias=host[-1])
        else:
            self.rows = known
        hmax, own_sizes = host[:S], host[S : 2 * S]
        self.mq, lq_sum, mk, real, tok_max, tok_min = (int(x) for x in host[-7:-1])
        # for the dispatcher's fallback (compaction / varlen): kept lengths and padded-pairs ratio
        self.lengths = (lq, lk, self.mq, mk)
        self.pad_ratio = B * H * self.mq * mk / max(real, 1)
        if SIZE_GRID > 1:  # padded query rows (row idx_q[0] again): a shape on the grid, never read back
            self.mq = min(N, -(-self.mq // SIZE_GRID) * SIZE_GRID)
        mq_real = self.mq
        if SIZE_BUCKETS > 0:  # ... and on a size bucket
            self.mq = min(N, size_bucket_int(self.mq))
        self.reason = self._check(host, hmax, own_sizes, lq_sum, real, tok_max, tok_min, B * H, mq_real)
        if self.reason is not None:
            self.prepared = None
            return
        self.offsets = [sum(self.sizes[:i]) for i in range(len(self.sizes))]
        if self.all_q:
            self.idx_q = None
        self.q_src = q_src.int().contiguous()

    def _check(self, host, hmax, own_sizes, lq_sum, real, tok_max, tok_min, rows, mq_real):
        """The class list from the host values, or the reason the class path cannot run the plan."""
        if host[-1]:
            return "a key bias other than 0 / -inf (a float attention mask)"
        if hmax[MAX_CLASS + 1]:
            return f"a key merges more than {MAX_CLASS} tokens"
        present = [c for c in range(1, MAX_CLASS + 1) if hmax[c] > 0]
        if not present:
            return "every key is masked"
        if tok_max != tok_min:
            return "the numbers of unmasked keys differ between batch rows"
        own = {c: n for c, n in enumerate(own_sizes) if n > 0}
        n1 = tok_max - sum(c * n for c, n in own.items())  # class 1: singletons and the demoted keys' copies
        self.classes = ([1] if n1 > 0 else []) + sorted(own)
        real_sizes = ([n1] if n1 > 0 else []) + [own[c] for c in sorted(own)]
        # the device's rule on the host values: each class's size bucket, unless the list would not fit
        padded, n1p = _padded_sizes_host(own_sizes, n1, self.rank_q.shape[-1])
        self.sizes = ([n1p] if n1 > 0 else []) + [padded[c] for c in sorted(own)]
        self.pads = [p - n for p, n in zip(self.sizes, real_sizes)]   # zero keys per class (combine subtracts)
        self.demoted = any(hmax[c] > own.get(c, 0) for c in present if c > 1)
        self.all_q = lq_sum == rows * self.rank_q.shape[-1]  # every query kept in every head
        self.max_count = max(present)
        if self.demoted and not DEMOTE:
            return "class sizes differ between heads (demotion is off)"
        # how unlike the heads are, without the size buckets' padding (bounded, and no head's doing)
        if rows * mq_real > PAD_LIMIT * max(lq_sum, 1):
            return "kept query lengths differ too much between heads"
        if rows * mq_real * sum(real_sizes) > PAD_LIMIT * max(real, 1):
            return "class sizes differ too much between heads (demoted keys would add too many pairs)"
        return None

    def _expected(self, expected, lq, hist, other_bias, kept_q, label, count, k_src, q_src):
        """Static sizes ``(mq, {count: size})`` from the caller (budget mode): ``valid`` is a 0-d device
        tensor that is False when the plan does not have them (non-finite scores); the attention then
        returns NaN rather than a result built on wrong sizes."""
        self.mq, sizes = int(expected[0]), {int(c): int(n) for c, n in expected[1].items() if n > 0}
        self.classes = sorted(sizes)
        self.sizes = [sizes[c] for c in self.classes]
        self.pads = [0] * len(self.sizes)
        slot = torch.arange(hist.shape[1], dtype=torch.int32, device=hist.device)
        want = torch.zeros_like(slot)
        for c, n in sizes.items():  # no `want[c] = n`: that copies a host scalar (breaks CUDA-graph capture)
            want = torch.where(slot == c, n, want)
        want[0] = hist[0, 0]  # the non-kept slot is free
        self.valid = (hist[:, 1:] == want[1:]).all() & (lq == self.mq).all() & (other_bias == 0).all()
        self.lengths = None
        self.pad_ratio = 1.0
        self.demoted = False
        self.all_q = self.mq == q_src.shape[-1]  # a plan without these sizes gives NaN anyway
        self.max_count = max(self.classes)
        self._finish(lq, kept_q, label, count, k_src, q_src)

    def _finish(self, lq, kept_q, label, count, k_src, q_src):
        """The per-class key lists of a plan with static sizes (no host value is read: capturable)."""
        B, H, N = q_src.shape
        self.lq = lq.reshape(B * H).contiguous()
        self.rank_q = row_cumsum(kept_q, 1)                             # (B, H, N) rank among kept queries
        self.idx_q = None if self.all_q else pack_kept(kept_q, self.rank_q).contiguous()
        self.idx = [pack_kept(label == c).contiguous() for c in self.classes]
        self.lens = [torch.full((B * H,), n, dtype=torch.int32, device=q_src.device) for n in self.sizes]
        self.partner = None
        if self.max_count == 2:  # pairs: a merged key's partner is the largest index of its group
            ar = torch.arange(N, dtype=torch.int32, device=q_src.device).expand(B, H, N)
            self.partner = torch.zeros((B, H, N), dtype=torch.int32, device=q_src.device).scatter_reduce_(
                2, k_src.long(), ar, "amax", include_self=False).contiguous()
        elif self.max_count > 2:  # larger groups: contiguous in perm (what the merge kernel reads)
            self.count, self.start = count, row_cumsum(count) - count
            self.perm = torch.argsort(k_src, dim=-1, stable=True).to(torch.int32)
        self.q_src = q_src.int().contiguous()

    def _gap_mask(self, N):
        """Bool ``(N,)`` on the device (no host value): the rows of the concatenated list that are a class's
        padding up to its size bucket (the same rows in every head: every class has one size)."""
        sizes, offsets = self._tables[0], self._tables[1]
        n1, n1p, padded = self._tables[4]
        starts = torch.cat([n1.reshape(1), offsets + sizes]).long()      # class 1's real end, then each class's
        ends = torch.cat([n1p.reshape(1), offsets + padded]).long()      # ... padded end (equal: no gap)
        pos = torch.arange(N, device=sizes.device)[:, None]
        return ((pos >= starts) & (pos < ends)).any(1)

    def _pack_demoted(self, label):
        """:func:`pack_demoted_kernel` for every possible class (enqueued before the host knows which exist):
        int32 ``(B, H, N)``, zero past the list's length (valid token indices, as ``pack_kept``)."""
        B, H, N = label.shape
        sizes, offsets, slots = self._tables[:3]
        out = torch.zeros((B, H, N), dtype=torch.int32, device=label.device)
        pack_demoted_kernel[(B * H,)](label.contiguous(), sizes, offsets, slots, out, N, NS=MAX_FUSED_CLASSES - 1,
                                       BLOCK=64 if interpreting() else 1024, num_warps=4)
        return out


def class_layout(q_src, k_src, key_bias=None, expected=None, prepare=None, known=None) -> ClassLayout:
    """The :class:`ClassLayout` of a plan; ``.reason`` is None when the class path can run it.

    ``expected`` (optional): ``(kept queries per head, {merge count: keys per head})`` known on the
    host (budget mode, :func:`expected_class_sizes`): no host sync, checked on the device.
    ``prepare`` (optional, without ``expected``): ``(k, v, key_repr)``: the classes' merged keys and values
    are built before the layout's host sync (what :func:`token_attention_classes` would build after it).
    ``known`` (optional, without ``expected``): the per-row host values of these rows from an earlier layout's
    read (its ``rows``, subset to these rows): the layout is built with no host read."""
    return ClassLayout(q_src.int().contiguous(), k_src.int().contiguous(), key_bias, expected, prepare, known)


def expected_class_sizes(n_tokens, n_video, eligible_q, budget_q, pairs, key_budget):
    """Host-side sizes of a budget plan with keys in pairs: ``(kept queries, {1: singles, 2: pairs})``
    per head, when every score is finite (the rounding of ``detect.budget_select``)."""
    reuse_q = int(torch.round(torch.tensor(eligible_q, dtype=torch.float64) * budget_q))
    p = int(torch.round(torch.tensor(pairs, dtype=torch.float64) * key_budget))
    return n_tokens - reuse_q, {1: n_tokens - 2 * p, 2: p}


def _class_keys(k, v, lay, idx, lens, n, h0, nh, key_repr, *, plain, block):
    """The keys and values ``(B, nh, n, D)`` of the key list ``idx`` (lengths ``lens``) for heads
    ``h0 .. h0 + nh``: the rows themselves (``plain``: every key a singleton), or each group's mean ``v``
    (and mean ``k`` for ``key_repr="mean"``; the source's ``k`` otherwise)."""
    B, H, N, D = k.shape
    DP = triton.next_power_of_2(D)
    kc = torch.empty((B, nh, n, D), dtype=k.dtype, device=k.device)
    vc = torch.empty((B, nh, n, D), dtype=v.dtype, device=v.device)
    grid = (triton.cdiv(n, block), B * nh)
    merged = [(v, vc)] + ([(k, kc)] if key_repr == "mean" else [])
    if plain or key_repr != "mean":
        gather_rows_kernel[grid](k, idx, lens, kc, k.stride(0), k.stride(1), k.stride(2), H, nh, h0, N, n,
                                 HEAD_DIM=D, DOUT=D, DP=DP, BLOCK_R=block, num_warps=4)
        merged = merged[:1]
    if plain:
        gather_rows_kernel[grid](v, idx, lens, vc, v.stride(0), v.stride(1), v.stride(2), H, nh, h0, N, n,
                                 HEAD_DIM=D, DOUT=D, DP=DP, BLOCK_R=block, num_warps=4)
    elif lay.partner is not None:  # pairs: (row + partner row) / 2, no sort of the plan
        for x, dst in merged:
            pair_mean_kernel[grid](x, idx, lay.partner, dst, x.stride(0), x.stride(1), x.stride(2), H, nh, h0, N,
                                    n, HEAD_DIM=D, DP=DP, BLOCK_R=block, num_warps=4)
    else:  # mean of the group's rows (members are contiguous in perm)
        dummy = torch.empty((B, nh, n), dtype=torch.float32, device=k.device)
        for x, dst in merged:
            merge_values_kernel[grid](x, idx, lens, lay.count, lay.start, lay.perm, dst, dst, dummy,
                                      x.stride(0), x.stride(1), x.stride(2), H, nh, h0, N, n, HAS_KB=False,
                                      WEIGHTED=False, HEAD_DIM=D, DOUT=D, DP=DP, BLOCK_G=block, num_warps=4)
    return kc, vc


def _shared_strides(results):
    """The classes' ``(o, lse, log w)`` with one set of strides for every ``o`` and every ``lse`` (rows
    contiguous), as the combine kernel reads them: as returned when they agree (SDPA gives every class the
    layout of the one ``q``, e.g. a transposed view: no copy), else contiguous copies."""
    o0, l0, _ = results[0]
    if all(o.stride() == o0.stride() and o.stride(-1) == 1 and lse.stride() == l0.stride() and lse.stride(-1) == 1
           for o, lse, _ in results):
        return results
    return [(o.contiguous(), lse.contiguous(), w) for o, lse, w in results]


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
    lay = class_layout(q_src, k_src, key_bias, prepare=(k, v, key_repr)) if layout is None else layout
    if lay.reason is not None:
        raise value_error("token plan", "count classes", f"the class path cannot run it: {lay.reason}",
                          "call timeripple.kernels.token_attention, which picks a path that can")
    mq, sizes = lay.mq, lay.sizes
    chunk_share = CLASS_CHUNK_SHARE if chunk_share is None else chunk_share
    all_q = lay.all_q  # every query kept (keys-only reuse): attend with q itself, no gathered copy
    listed = lay.valid is None  # the sync path: every class's keys in one list, each class a view of it
    built = lay.prepared is not None  # ... whose keys and values were built before the sync (all heads)
    per_head = B * (mq * D * (len(sizes) + (not all_q)) + (not built) * sum(sizes) * 2 * D) * q.element_size()
    budget = max(chunk_share * B * H * N * D * q.element_size(), CLASS_CHUNK_FLOOR)
    hc = max(1, min(H, int(budget // max(per_head, 1))))
    hc = -(-H // -(-H // hc))  # the same number of chunks, as even as possible
    interp = interpreting()
    BLOCK = 16 if interp else 64
    DP = triton.next_power_of_2(D)
    for h0 in range(0, H, hc):
        nh = min(H, h0 + hc) - h0
        if all_q:
            qc = q[:, h0 : h0 + nh]
        else:
            qc = torch.empty((B, nh, mq, D), dtype=q.dtype, device=q.device)
            gather_rows_kernel[(triton.cdiv(mq, BLOCK), B * nh)](
                q, lay.idx_q, lay.lq, qc, q.stride(0), q.stride(1), q.stride(2), H, nh, h0, N, mq,
                HEAD_DIM=D, DOUT=D, DP=DP, BLOCK_R=BLOCK, num_warps=4,
            )
        results, kall, vall = [], None, None
        if listed:
            if built:
                kall, vall = (x[:, h0 : h0 + nh] for x in lay.prepared)
            else:
                kall, vall = _class_keys(k, v, lay, lay.idx_all, lay.len_all, sum(sizes), h0, nh, key_repr,
                                         plain=lay.max_count == 1, block=BLOCK)
                if lay.gap is not None and any(lay.pads):  # padding keys: zero k and v
                    for x in (kall, vall):
                        x.masked_fill_(lay.gap[: x.shape[2], None], 0)
            per_class = [(c, kall[:, :, o : o + n], vall[:, :, o : o + n])
                         for c, n, o in zip(lay.classes, sizes, lay.offsets)]
        else:
            per_class = [(c, *_class_keys(k, v, lay, idx, lens, n, h0, nh, key_repr, plain=c == 1, block=BLOCK))
                         for c, n, idx, lens in zip(lay.classes, sizes, lay.idx, lay.lens)]
        pads = lay.pads or [0] * len(sizes)
        for c, kc, vc in per_class:
            o, lse = sdpa_lse(qc, kc, vc, scale)  # (B, nh, Mq, D), (B, nh, Mq)
            if lay.valid is not None and not results:  # static sizes that the plan does not have: NaN out
                lse = lse + torch.where(lay.valid, 0.0, float("nan"))
            results.append((o, lse, math.log(c)))
        if len(results) == 1 and pads[0]:  # one padded class: through the combine, which subtracts its pads
            results.append((results[0][0], torch.full_like(results[0][1], float("-inf")), 0.0))
            pads = [pads[0], 0]
        del qc, per_class, kall, vall
        if lay.valid is not None and len(results) == 1:  # one class: the LSE is not read, poison o
            o, lse, w = results[0]
            results[0] = (o + torch.where(lay.valid, 0.0, float("nan")).to(o.dtype), lse, w)
        results = _shared_strides(results)
        (o0, l0, _), slots = results[0], results + [results[0]] * (MAX_FUSED_CLASSES - len(results))
        log_pads = [math.log(p) if p > 0 else float("-inf") for p in pads]
        log_pads += [float("-inf")] * (MAX_FUSED_CLASSES - len(log_pads))
        combine_classes_kernel[(triton.cdiv(N, BLOCK), B * nh)](
            *[t for o, lse, _ in slots for t in (o, lse)], *[w for _, _, w in slots], *log_pads, lay.q_src, lay.rank_q,
            out, out.stride(0), out.stride(1), out.stride(2), o0.stride(0), o0.stride(1), o0.stride(2),
            l0.stride(0), l0.stride(1), H, nh, h0, N, mq, NC=len(results), HEAD_DIM=D, DH=DP, BLOCK_S=BLOCK,
            num_warps=4,
        )
        del results
    return out
