"""Bias-free token attention by count classes (kernels/class_attention.py), the pairs-only key plan
(pairs.pair_sources_from_scores) and the merged-key representative (key_repr).

On a CPU machine the Triton kernels run under the interpreter on small shapes and the log-sum-exp SDPA
falls back to float32 torch; on a GPU the same tests run compiled on cuDNN, plus large shapes.
"""

import logging
import math

import pytest
import torch
from test_kernels_triton import assert_close_to_reference

from timeripple import detect, pairs, ripple_attention
from timeripple.kernels import class_attention as cl
from timeripple.kernels import token_attention, token_attention_ref
from timeripple.detect import axis_score_table as token_axis_scores_torch
from timeripple.kernels.token_attention_torch import random_token_plan
from timeripple.token_plan import build_token_plan

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def smooth(B, H, grid, D, text_len=0, noise=0.1, device=DEVICE):
    """q/k-like input: slowly varying over the grid plus noise, text appended."""
    T, Hg, Wg = grid
    coarse = torch.randn(B * H, D, 2, 2, 2)
    video = torch.nn.functional.interpolate(coarse, size=grid, mode="trilinear", align_corners=True)
    video = video.flatten(2).transpose(1, 2).reshape(B, H, T * Hg * Wg, D)
    x = torch.cat([video + noise * torch.randn_like(video), torch.randn(B, H, text_len, D)], dim=2)
    return x.to(device)


def pairs_plan(q, k, grid, text_len, budget, key_budget, text_position="after"):
    q_src, k_src, _, _ = build_token_plan(
        q, k, grid=grid, thresholds={"t": 1.0, "y": 1.0, "x": 1.0}, text_len=text_len,
        text_position=text_position, budget=budget, key_budget=key_budget, token_keys="pairs",
        fused=q.is_cuda,
    )
    return q_src, k_src


@pytest.mark.parametrize("grid", [(4, 4, 6), (3, 5, 4), (5, 3, 3)])
@pytest.mark.parametrize("budget", [None, 0.4, 1.0])
def test_pair_plan_merges_disjoint_pairs_only(grid, budget):
    B, H, D = 2, 3, 16
    x = smooth(B, H, grid, D, device="cpu")
    scores = token_axis_scores_torch(x, grid, 2, "strict")  # (B, H, Nv, 3)
    src, via = pairs.pair_sources_from_scores(scores, grid, {"t": 0.3, "y": 0.3, "x": 0.3}, budget=budget)
    ar = torch.arange(x.shape[2])
    reused = src != ar
    assert reused.any()  # the test can fail: something is merged
    # sources are computed (no chains) and absorb exactly one token each (pairs)
    assert (src.gather(2, src.long()) == src).all()
    count = torch.zeros_like(src).scatter_add_(2, src.long(), torch.ones_like(src))
    assert count.max() <= 2
    # a pair is two neighbours on the axis named by `via`, in one 2x2x2 cube
    T, Hg, Wg = grid
    stride = {0: Hg * Wg, 1: Wg, 2: 1}
    for axis, s in stride.items():
        on = reused & (via == axis)
        assert ((ar - src)[on] == s).all()
    if budget is not None:  # the same number of pairs in every (b, h): equal class sizes
        per_head = reused.sum(-1)
        assert (per_head == per_head.flatten()[0]).all()
        assert per_head.flatten()[0] == round(budget * pairs.pair_count(grid, ("t", "y", "x")))


def test_pair_plan_same_on_torch_and_fused_scores():
    grid, B, H, D = (4, 6, 8), 1, 2, 32
    q, k = smooth(B, H, grid, D), smooth(B, H, grid, D)  # CUDA, or CPU under the Triton interpreter
    kw = dict(grid=grid, thresholds={"t": 1.0, "y": 1.0, "x": 1.0}, budget=0.6, key_budget=0.8, token_keys="pairs")
    torch_plan = build_token_plan(q, k, fused=False, **kw)
    fused_plan = build_token_plan(q, k, fused=True, **kw)
    for a, b in zip(torch_plan[:2], fused_plan[:2]):
        assert torch.equal(a.int(), b.int())


@pytest.mark.parametrize("target", [0.5, 0.75, 0.875])
def test_pair_budgets_give_the_target_savings(target):
    grid, text_len, H = (6, 6, 8), 10, 2
    q, k = smooth(1, H, grid, 16, text_len, device="cpu"), smooth(1, H, grid, 16, text_len, device="cpu")
    bq, bk = pairs.pair_budgets_for_pair_savings(target, grid, text_len=text_len)
    q_src, k_src = pairs_plan(q, k, grid, text_len, max(bq, 1e-9), bk)
    N = q.shape[2]
    ar = torch.arange(N)
    kept = (q_src == ar).sum(-1).double() * (k_src == ar).sum(-1).double()
    assert ((1 - kept / N**2) - target).abs().max() < 0.01


def test_pair_budgets_reject_unreachable_target():
    with pytest.raises(ValueError, match="target"):
        pairs.pair_budgets_for_pair_savings(0.99, (4, 4, 4))


@pytest.mark.parametrize("key_repr", ["source", "mean"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("text_len,text_position", [(0, "after"), (7, "after"), (5, "before")])
def test_classes_match_reference(key_repr, dtype, text_len, text_position):
    grid, B, H, D = (4, 4, 6), 2, 3, 64
    q, k, v = (smooth(B, H, grid, D, text_len).to(dtype) for _ in range(3))
    if text_position == "before":
        q, k, v = (torch.roll(x, text_len, dims=2) for x in (q, k, v))
    q_src, k_src = pairs_plan(q, k, grid, text_len, 0.5, 0.75, text_position)
    lay = cl.class_layout(q_src, k_src)
    assert lay.reason is None and lay.classes == [1, 2]
    got = token_attention(q, k, v, q_src, k_src, key_repr=key_repr, method="classes")
    want = token_attention_ref(q.double(), k.double(), v.double(), q_src, k_src, key_repr=key_repr)
    assert got.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    assert (got.double() - want).abs().max() < tol
    if key_repr == "source":
        assert_close_to_reference(got, q, k, v, q_src, k_src)


def test_mean_key_differs_from_source_key_and_compaction_agrees():
    grid, B, H, D = (4, 4, 6), 1, 2, 64
    q, k, v = (smooth(B, H, grid, D) for _ in range(3))
    q_src, k_src = random_token_plan(B, H, q.shape[2], 0.6, device=DEVICE)  # chains: counts up to 4+
    ref_mean = token_attention_ref(q.double(), k.double(), v.double(), q_src, k_src, key_repr="mean")
    ref_src = token_attention_ref(q.double(), k.double(), v.double(), q_src, k_src)
    assert (ref_mean - ref_src).abs().max() > 1e-4  # the option changes the result
    got = token_attention(q, k, v, q_src, k_src, key_repr="mean", method="compact")
    assert (got.double() - ref_mean).abs().max() < 1e-5


def test_key_padding_mask_drops_keys_from_every_class():
    grid, text_len, B, H, D = (4, 4, 4), 8, 2, 2, 64
    q, k, v = (smooth(B, H, grid, D, text_len) for _ in range(3))
    q_src, k_src = pairs_plan(q, k, grid, text_len, 0.5, 1.0)
    bias = torch.zeros(B, q.shape[2], device=DEVICE)
    bias[:, -3:] = float("-inf")  # padded text, the same in every row
    assert cl.class_layout(q_src, k_src, bias).reason is None
    got = token_attention(q, k, v, q_src, k_src, key_bias=bias, method="classes")
    assert_close_to_reference(got, q, k, v, q_src, k_src, key_bias=bias)
    bias[0, -5] = float("-inf")  # rows with different numbers of keys: not one static shape
    assert "differ" in cl.class_layout(q_src, k_src, bias).reason


def test_forced_classes_run_unlike_heads_per_group_and_fall_back_with_one_warning(caplog, monkeypatch):
    B, H, N, D = 1, 2, 40, 64
    q, k, v = (torch.randn(B, H, N, D, device=DEVICE) for _ in range(3))
    keep = torch.tensor([[0.3, 0.8]])  # class sizes differ between heads: one layout cannot run it
    q_src, k_src = random_token_plan(B, H, N, keep, device=DEVICE)
    reason = cl.class_layout(q_src, k_src).reason
    assert reason is not None and "differ" in reason
    with pytest.raises(ValueError, match="class path cannot run"):
        cl.token_attention_classes(q, k, v, q_src.int(), k_src.int(), scale=D ** -0.5)
    monkeypatch.setattr(cl, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="timeripple"):  # heads apart: one layout per head group
        got = token_attention(q, k, v, q_src, k_src, method="classes")
    assert not any("count-class path cannot run" in r.getMessage() for r in caplog.records)
    assert_close_to_reference(got, q, k, v, q_src, k_src)
    bias = torch.randn(B, N, device=DEVICE)  # a float key bias: no class constant, grouping cannot help
    assert "bias" in cl.class_layout(q_src, k_src, bias).reason
    with caplog.at_level(logging.WARNING, logger="timeripple"):
        for _ in range(2):
            got = token_attention(q, k, v, q_src, k_src, key_bias=bias, method="classes")
    assert sum("count-class path cannot run" in r.getMessage() for r in caplog.records) == 1
    assert_close_to_reference(got, q, k, v, q_src, k_src, key_bias=bias)


def test_float_key_bias_is_not_a_class_constant():
    B, H, N, D = 1, 2, 30, 64
    src = torch.arange(N, dtype=torch.int32, device=DEVICE).expand(B, H, N).contiguous()
    assert "bias" in cl.class_layout(src, src, torch.randn(B, N, device=DEVICE)).reason


@pytest.mark.parametrize("bad", [dict(token_keys="triples"), dict(key_repr="median"),
                                 dict(token_keys="pairs", window=3), dict(key_budget=0.5)])
def test_ripple_attention_rejects_bad_plan_options(bad):
    q = torch.randn(1, 1, 64, 16)
    kw = dict(grid=(4, 4, 4), threshold=0.5, mode="token", **bad)
    with pytest.raises(ValueError):
        ripple_attention(q, q, q, **kw)


def test_ripple_attention_pairs_device_stats_and_savings():
    grid, text_len = (4, 6, 6), 12
    q, k, v = (smooth(1, 2, grid, 64, text_len) for _ in range(3))
    bq, bk = pairs.pair_budgets_for_pair_savings(0.75, grid, text_len=text_len)
    out, stats = ripple_attention(q, k, v, grid=grid, text_len=text_len, threshold=0.5, mode="token",
                                  budget=bq, key_budget=bk, token_keys="pairs", return_stats="device")
    assert stats.qk_savings.device == q.device and abs(float(stats.qk_savings.mean()) - 0.75) < 0.01
    dense = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    err = (out - dense).abs().mean() / dense.abs().mean()
    assert 0 < err < 0.5, err  # an approximation of dense attention, not a copy of it


@requires_cuda
@pytest.mark.parametrize("key_repr", ["source", "mean"])
def test_cuda_classes_large_match_reference_and_auto_picks_them(key_repr, monkeypatch):
    grid, text_len, H, D = (9, 16, 20), 77, 4, 128
    q, k, v = (smooth(1, H, grid, D, text_len).bfloat16() for _ in range(3))
    q_src, k_src = pairs_plan(q, k, grid, text_len, 0.55, 1.0)
    calls = []
    real = cl.token_attention_classes
    monkeypatch.setattr(cl, "token_attention_classes", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    got = token_attention(q, k, v, q_src, k_src, key_repr=key_repr)
    assert calls, "auto dispatch did not take the count-class path"
    want = token_attention_ref(q.double(), k.double(), v.double(), q_src, k_src, key_repr=key_repr)
    err = (got.double() - want).abs()
    assert err.max() < 3e-2 and err.mean() < 2e-3, (err.max(), err.mean())


@requires_cuda
def test_cuda_sdpa_lse_matches_float32():
    q, k, v = (torch.randn(1, 2, 300, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    out, lse = cl.sdpa_lse(q, k, v, 128 ** -0.5)
    s = q.float() @ k.float().transpose(-1, -2) * 128 ** -0.5
    assert (lse - torch.logsumexp(s, -1)).abs().max() < 1e-3
    assert (out.float() - torch.softmax(s, -1) @ v.float()).abs().max() < 2e-2
    assert math.isfinite(float(lse.sum()))


def test_static_sizes_skip_the_sync_and_wrong_sizes_give_nan(monkeypatch):
    monkeypatch.setattr(cl, "SIZE_BUCKETS", 0)  # the host predicts the plan's real sizes (buckets pad them)
    grid, text_len, B, H, D = (4, 4, 6), 6, 1, 2, 64
    q, k, v = (smooth(B, H, grid, D, text_len) for _ in range(3))
    bq, bk = 0.5, 0.75
    q_src, k_src = pairs_plan(q, k, grid, text_len, bq, bk)
    N = q.shape[2]
    mq, sizes = cl.expected_class_sizes(N, N - text_len, detect.eligible_count(grid, 2, ("t", "y", "x")), bq,
                                        pairs.pair_count(grid, ("t", "y", "x")), bk)
    lay = cl.class_layout(q_src, k_src)
    assert (lay.mq, lay.sizes) == (mq, [sizes[1], sizes[2]])  # the host prediction is the plan's
    want = token_attention(q, k, v, q_src, k_src, method="classes")
    got = token_attention(q, k, v, q_src, k_src, method="classes", expected=[mq, sizes[1], sizes[2]])
    assert torch.equal(got, want)
    wrong = token_attention(q, k, v, q_src, k_src, method="classes", expected=[mq, sizes[1] - 2, sizes[2] + 1])
    assert torch.isnan(wrong).all()  # never a result built on wrong sizes


def test_demoted_key_stands_in_class_one_once_per_member(monkeypatch):
    # head 0 has two count-2 keys, head 1 one: class 2 keeps one key per head, head 0's other pair
    # joins class 1 as two copies of its source
    monkeypatch.setattr(cl, "MIN_CLASS_KEYS", 1)
    N = 8
    q_src = torch.arange(N, dtype=torch.int32, device=DEVICE).expand(1, 2, N).contiguous()
    k_src = torch.tensor([[[0, 0, 2, 2, 4, 5, 6, 7], [0, 0, 2, 3, 4, 5, 6, 7]]], dtype=torch.int32, device=DEVICE)
    lay = cl.class_layout(q_src, k_src)
    assert lay.reason is None and lay.demoted
    assert (lay.classes, lay.sizes) == ([1, 2], [6, 1])
    assert lay.offsets == [0, 6]
    keys = lay.idx_all[0, :, :7].tolist()                 # class 1, then class 2, in one list
    assert keys[0] == [2, 2, 4, 5, 6, 7, 0]               # the pair at 2 demoted: twice; the pair at 0 in class 2
    assert keys[1] == [2, 3, 4, 5, 6, 7, 0]
    monkeypatch.setattr(cl, "DEMOTE", False)  # the benchmarks' same-run baseline: compaction, as before
    assert "demotion is off" in cl.class_layout(q_src, k_src).reason



def test_size_bucket_rounds_up_on_a_coarse_grid_the_same_on_every_device(monkeypatch):
    monkeypatch.setattr(cl, "BUCKET_MIN_STEP", 64)
    n = torch.arange(0, 70_000)
    b = cl.size_bucket(n, 16)
    assert b[0] == 0 and (b >= n).all() and (b[1:] % 64 == 0).all()
    big = n >= 64 * 16  # above the smallest step: at most 1/16 more, 16 sizes per octave
    assert (b[big] <= n[big] + n[big] // 16 + 1).all()
    assert len(torch.unique(b[(n > 16384) & (n <= 32768)])) == 16  # 16 steps of 1,024 in the octave
    assert torch.equal(cl.size_bucket(n, 0), n)  # off
    assert b.tolist() == [cl.size_bucket_int(x, 16) for x in n.tolist()]  # the host's rule is the device's
    if torch.cuda.is_available():
        assert torch.equal(cl.size_bucket(n.cuda(), 16).cpu(), b)


@pytest.mark.parametrize("plan", ["chains", "pairs-only"])
def test_size_buckets_pad_with_zero_keys_and_stay_exact(plan, monkeypatch):
    """``SIZE_BUCKETS``: every class is padded up to its size bucket with zero keys (score 0) and zero values;
    the combine subtracts each padding key's e^0 from the class's denominator, so the result is the plan's.
    ``pairs-only``: one class (every key merged in a pair), padded: it too goes through the combine."""
    monkeypatch.setattr(cl, "MIN_CLASS_KEYS", 1)
    monkeypatch.setattr(cl, "PAD_LIMIT", 10.0)
    monkeypatch.setattr(cl, "BUCKET_MIN_STEP", 8)
    B, H, N, D = 1, 3, 150, 64
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(B, H, N, D, generator=g).to(DEVICE) for _ in range(3))
    q_src = torch.arange(N, dtype=torch.int32).expand(B, H, N).contiguous().to(DEVICE)
    if plan == "chains":
        _, k_src = random_token_plan(B, H, N, 0.55, device=DEVICE, generator=g)
    else:
        k_src = (torch.arange(N, dtype=torch.int32) // 2 * 2).expand(B, H, N).contiguous().to(DEVICE)
    monkeypatch.setattr(cl, "SIZE_BUCKETS", 0)
    base = cl.class_layout(q_src, k_src, prepare=(k, v, "source"))
    monkeypatch.setattr(cl, "SIZE_BUCKETS", 4)
    lay = cl.class_layout(q_src, k_src, prepare=(k, v, "source"))
    assert lay.reason is None and lay.classes == base.classes and any(lay.pads)
    assert [n - p for n, p in zip(lay.sizes, lay.pads)] == base.sizes
    assert lay.sizes == [cl.size_bucket_int(n, 4) for n in base.sizes]
    if plan == "pairs-only":
        assert lay.classes == [2]
    gap = lay.gap.cpu()
    assert int(gap.sum()) == sum(lay.pads)
    for x in lay.prepared:  # the padding rows of the key list are zero, every other row is base's
        assert (x[:, :, gap] == 0).all()
    want = token_attention_ref(q.double(), k.double(), v.double(), q_src, k_src)
    for layout in (lay, None):  # keys and values built before the sync, or per call (no `prepare`)
        got = cl.token_attention_classes(q, k, v, q_src.int(), k_src.int(), scale=D ** -0.5, layout=layout)
        assert (got.double() - want).abs().max() < 1e-5


@pytest.mark.parametrize("calls", [1, 2, 3])
def test_class_calls_caps_the_sdpa_calls_keeping_the_largest_classes_exact(calls, monkeypatch):
    """``CLASS_CALLS``: at most that many classes run as their own SDPA call; the kept ones are those that
    cover the most tokens, the others are demoted (more entries), and the result stays the plan's."""
    monkeypatch.setattr(cl, "MIN_CLASS_KEYS", 1)
    monkeypatch.setattr(cl, "PAD_LIMIT", 10.0)
    B, H, N, D = 1, 3, 96, 64
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(B, H, N, D, generator=g).to(DEVICE) for _ in range(3))
    q_src = torch.arange(N, dtype=torch.int32).expand(B, H, N).contiguous().to(DEVICE)  # keys only
    _, k_src = random_token_plan(B, H, N, 0.55, device=DEVICE, generator=g)
    full = cl.class_layout(q_src, k_src)
    assert full.reason is None and len(full.classes) > 3
    monkeypatch.setattr(cl, "CLASS_CALLS", calls)
    lay = cl.class_layout(q_src, k_src)
    assert lay.reason is None and len(lay.classes) == calls and lay.classes[0] == 1
    own = {c: n for c, n in zip(full.classes, full.sizes) if c > 1}
    largest = sorted(own, key=lambda c: -c * own[c])[: calls - 1]
    assert lay.classes[1:] == sorted(largest)
    assert sum(lay.sizes) > sum(full.sizes)  # demoted keys stand in class 1 as c copies
    got = cl.token_attention_classes(q, k, v, q_src.int(), k_src.int(), scale=D ** -0.5, layout=lay)
    want = token_attention_ref(q.double(), k.double(), v.double(), q_src, k_src)
    assert (got.double() - want).abs().max() < 1e-5


@pytest.mark.parametrize("min_keys", [1, 256])
@pytest.mark.parametrize("key_repr", ["source", "mean"])
def test_class_sizes_that_differ_per_head_run_exact_by_demotion(min_keys, key_repr, monkeypatch):
    monkeypatch.setattr(cl, "MIN_CLASS_KEYS", min_keys)
    B, H, N, D = 2, 3, 96, 64
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(B, H, N, D, generator=g).to(DEVICE) for _ in range(3))
    q_src = torch.arange(N, dtype=torch.int32).expand(B, H, N).contiguous().to(DEVICE)  # keys only
    _, k_src = random_token_plan(B, H, N, 0.55, device=DEVICE, generator=g)  # chains: counts 1 to 6+
    monkeypatch.setattr(cl, "PAD_LIMIT", 10.0)  # the tiny plan's demotion is heavy; the rule is tested apart
    lay = cl.class_layout(q_src, k_src)
    assert lay.reason is None and lay.demoted
    if min_keys == 1:
        assert len(lay.classes) >= 3  # the combine kernel with more than two classes
    else:
        assert lay.classes == [1]      # small classes that vary join class 1
    got = token_attention(q, k, v, q_src, k_src, key_repr=key_repr, method="classes")
    want = token_attention_ref(q.double(), k.double(), v.double(), q_src, k_src, key_repr=key_repr)
    assert (got.double() - want).abs().max() < 1e-5
    monkeypatch.setattr(cl, "CLASS_CHUNK_FLOOR", 0)  # one head per chunk: q itself, sliced, per chunk
    chunked = cl.token_attention_classes(q, k, v, q_src.int(), k_src.int(), scale=D ** -0.5, key_repr=key_repr,
                                         chunk_share=1e-6)
    assert torch.allclose(chunked, got, atol=1e-6)


def test_demotion_that_adds_too_many_pairs_goes_to_compaction():
    B, H, N = 1, 3, 64
    q_src = torch.arange(N, dtype=torch.int32, device=DEVICE).expand(B, H, N).contiguous()
    k_src = q_src.clone()
    k_src[0, :2] = torch.arange(N, dtype=torch.int32, device=DEVICE) // 8 * 8  # heads 0, 1: eight keys of count 8
    lay = cl.class_layout(q_src, k_src)  # head 2 keeps all 64 keys: every count-8 key stands 8 times in class 1
    assert lay.reason is not None and "too many pairs" in lay.reason


def test_masked_keys_of_different_counts_per_batch_row_are_refused():
    B, H, N = 2, 1, 16
    src = torch.arange(N, dtype=torch.int32, device=DEVICE).expand(B, H, N).contiguous()
    bias = torch.zeros(B, N, device=DEVICE)
    bias[1, -2:] = float("-inf")
    assert "differ between batch rows" in cl.class_layout(src, src, bias).reason


def test_pooled_budget_plan_takes_the_class_path(monkeypatch):
    # the bundled configs' plan: per-head kept keys differ (budget pooled over the heads)
    monkeypatch.setattr(cl, "MIN_CLASS_KEYS", 1)
    monkeypatch.setattr(cl, "PAD_LIMIT", 10.0)  # a tiny grid's demotion is heavy; the rule is tested apart
    grid, B, H, D = (4, 6, 8), 1, 3, 32
    q, k, v = (smooth(B, H, grid, D) for _ in range(3))
    opts = dict(grid=grid, threshold=0.5, mode="token", pair_savings=0.5, key_share="auto", budget_scope="call",
                key_repr="mean", key_score="kv", query_repr="interp")
    calls = []
    real = cl.token_attention_classes
    monkeypatch.setattr(cl, "token_attention_classes", lambda *a, **kw: calls.append(kw["layout"]) or real(*a, **kw))
    got = ripple_attention(*(x.to(torch.bfloat16) for x in (q, k, v)), **opts)  # auto takes classes for bf16
    if q.is_cuda:  # the CPU's auto dispatch runs plain torch
        assert calls and calls[0].reason is None
    q_src, k_src = build_token_plan(q, k, grid=grid, thresholds={"t": 0.5, "y": 0.5, "x": 0.5}, budget=0.0,
                                    key_budget=0.5, v=v, key_score="kv", budget_scope="call")[:2]
    lay = cl.class_layout(q_src, k_src)
    hist = [(torch.zeros_like(k_src).scatter_add_(2, k_src.long(), torch.ones_like(k_src)) == c).sum(-1) for c in (1, 2)]
    assert any((h != h.flatten()[0]).any() for h in hist)  # sizes differ per head: the case demotion serves
    assert lay.reason is None and lay.demoted
    out = token_attention(q, k, v, q_src, k_src, key_repr="mean", method="classes")
    want = token_attention_ref(q.double(), k.double(), v.double(), q_src, k_src, key_repr="mean")
    assert (out.double() - want).abs().max() < 1e-5
    assert got.shape == q.shape and torch.isfinite(got).all()


def test_demotion_with_masked_padding_keys_matches_reference(monkeypatch):
    # HunyuanVideo's padded text keys: the same number masked in every row, chain plan on the video part
    monkeypatch.setattr(cl, "MIN_CLASS_KEYS", 1)
    monkeypatch.setattr(cl, "PAD_LIMIT", 10.0)
    B, H, N, D, text = 2, 3, 80, 64, 12
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(B, H, N, D, generator=g).to(DEVICE) for _ in range(3))
    q_src, k_src = random_token_plan(B, H, N, 0.5, text_len=text, device=DEVICE, generator=g)
    bias = torch.zeros(B, N, device=DEVICE)
    bias[:, -4:] = float("-inf")
    lay = cl.class_layout(q_src, k_src, bias)
    assert lay.reason is None and lay.demoted
    got = token_attention(q, k, v, q_src, k_src, key_bias=bias, key_repr="mean", method="classes")
    want = token_attention_ref(q.double(), k.double(), v.double(), q_src, k_src, key_bias=bias.double(),
                               key_repr="mean")
    assert (got.double() - want).abs().max() < 1e-5


@pytest.mark.parametrize("key_repr", ["source", "mean"])
def test_keys_merged_before_the_sync_and_strided_class_outputs_give_the_same_result(key_repr, monkeypatch):
    monkeypatch.setattr(cl, "MIN_CLASS_KEYS", 1)
    monkeypatch.setattr(cl, "PAD_LIMIT", 10.0)  # the tiny plan's demotion is heavy; the rule is tested apart
    B, H, N, D = 1, 3, 80, 32
    g = torch.Generator().manual_seed(5)
    # (B, H, N, D) views of a (B, N, H, D) tensor, as diffusers' processors hand q, k, v over
    q, k, v = (torch.randn(B, N, H, D, generator=g).to(DEVICE).transpose(1, 2) for _ in range(3))
    q_src, k_src = random_token_plan(B, H, N, 0.5, device=DEVICE, generator=g)
    q_src, k_src = q_src.int(), k_src.int()
    lay = cl.class_layout(q_src, k_src, prepare=(k, v, key_repr))
    assert lay.reason is None and lay.prepared is not None and len(lay.classes) >= 2 and not lay.all_q
    kw = dict(scale=D ** -0.5, key_repr=key_repr)
    built = cl.token_attention_classes(q, k, v, q_src, k_src, layout=lay, **kw)
    after = cl.token_attention_classes(q, k, v, q_src, k_src, layout=cl.class_layout(q_src, k_src), **kw)
    assert torch.equal(built, after)  # merged before the sync or after it: the same kernels, the same rows
    want = token_attention_ref(q.double(), k.double(), v.double(), q_src, k_src, key_repr=key_repr)
    assert (built.double() - want).abs().max() < 1e-5
    real = cl.sdpa_lse

    def strided(*args):  # every class's o in a (B, M, H, D) layout, as SDPA returns it for a transposed q
        o, lse = real(*args)
        return o.transpose(1, 2).contiguous().transpose(1, 2), lse

    monkeypatch.setattr(cl, "sdpa_lse", strided)
    assert torch.equal(cl.token_attention_classes(q, k, v, q_src, k_src, layout=lay, **kw), built)
    assert cl._shared_strides([(o, o[..., 0], 0.0) for o in (built, built.transpose(1, 2))])[1][0].is_contiguous()


def test_head_groups_cut_where_kept_counts_grow_past_the_spread():
    from timeripple.kernels.head_groups import head_groups

    kept_k = [100, 4000, 110, 4200, 124, 126]
    assert head_groups([10] * 6, kept_k) == [[0, 2, 4], [5], [1, 3]]  # 126 > 1.25 x 100 starts a group
    assert head_groups([10, 10, 100], [5, 5, 5]) == [[0, 1], [2]]  # kept queries cut groups too
    assert head_groups([7], [7]) == [[0]]


@pytest.mark.parametrize("key_repr", ["source", "mean"])
def test_heads_too_unlike_for_one_layout_run_per_group_of_alike_heads(key_repr, monkeypatch):
    B, H, N, D = 1, 4, 64, 32
    g = torch.Generator().manual_seed(9)
    q, k, v = (torch.randn(B, H, N, D, generator=g).to(DEVICE) for _ in range(3))
    q_src = torch.arange(N, dtype=torch.int32, device=DEVICE).expand(B, H, N).contiguous()  # keys only
    k_src = q_src.clone()
    k_src[0, :3, : N - 4] = torch.arange(N - 4, dtype=torch.int32, device=DEVICE) // 4 * 4  # heads 0-2: groups of 4
    assert "too many pairs" in cl.class_layout(q_src, k_src).reason  # one layout: 4 x 64 entries for 121 keys
    layouts = []
    real = cl.token_attention_classes
    monkeypatch.setattr(cl, "token_attention_classes", lambda *a, **kw: layouts.append(kw["layout"]) or real(*a, **kw))
    got = token_attention(q, k, v, q_src, k_src, key_repr=key_repr, method="classes")
    want = token_attention_ref(q.double(), k.double(), v.double(), q_src, k_src, key_repr=key_repr)
    assert (got.double() - want).abs().max() < 1e-5
    assert [lay.classes for lay in layouts] == [[1, 4], [1]]  # heads 0-2 (15 keys of count 4, 4 singles), head 3
    # a key mask of several batch rows does not follow its rows into groups: compaction, as before
    layouts.clear()
    q2, k2, v2, qs2, ks2 = (torch.cat([x, x]) for x in (q, k, v, q_src, k_src))
    bias = torch.zeros(2, N, device=DEVICE)
    bias[:, -1] = float("-inf")
    assert "too many pairs" in cl.class_layout(qs2, ks2, bias).reason
    got = token_attention(q2, k2, v2, qs2, ks2, key_bias=bias, key_repr=key_repr, method="classes")
    want = token_attention_ref(q2.double(), k2.double(), v2.double(), qs2, ks2, key_bias=bias, key_repr=key_repr)
    assert (got.double() - want).abs().max() < 1e-5 and not layouts


def test_one_host_read_per_call_also_when_heads_are_grouped():
    """The class path reads the host values of a plan once per call; grouping unlike heads reuses that read
    (every row's kept counts travel in it) and builds each group's layout with no read of its own; the static
    sizes of budget mode read nothing. The layouts built from known values equal those built by a read."""
    from host_reads import count_host_reads

    B, H, N, D = 1, 4, 64, 64
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(B, H, N, D, generator=g).to(DEVICE) for _ in range(3))
    for keep in (0.5, torch.tensor([[0.2, 0.25, 0.9, 0.95]])):  # one layout / heads grouped
        q_src, k_src = random_token_plan(B, H, N, keep, device=DEVICE, generator=g)
        with count_host_reads() as reads:
            got = token_attention(q, k, v, q_src, k_src, method="classes")
        assert sum(reads.values()) == 1 and all("class_attention.py" in w for w in reads), dict(reads)
        assert_close_to_reference(got, q, k, v, q_src, k_src)
    lay = cl.class_layout(q_src, k_src)
    rows = [2, 3]
    sub = [x[:, rows].contiguous() for x in (q_src, k_src)]
    known = {name: [lay.rows[name][r] for r in rows] for name in ("hist", "lq", "lk")}
    with count_host_reads() as reads:
        from_known = cl.class_layout(*sub, known=dict(known, other_bias=lay.rows["other_bias"]))
    assert not reads, dict(reads)
    read = cl.class_layout(*sub)
    assert (from_known.reason, from_known.mq, from_known.lengths[2:]) == (read.reason, read.mq, read.lengths[2:])
    if read.reason is None:
        assert (from_known.classes, from_known.sizes) == (read.classes, read.sizes)
        assert torch.equal(from_known.idx_all, read.idx_all)
    x = smooth(1, 2, (4, 4, 4), D)
    q_src, k_src = pairs_plan(x, x, (4, 4, 4), 0, 0.5, 1.0)  # budget mode: the same sizes in every head
    ar = torch.arange(q_src.shape[-1], device=DEVICE)
    count = torch.zeros(q_src.shape, dtype=torch.long, device=DEVICE).scatter_add_(
        2, k_src.long(), torch.ones(q_src.shape, dtype=torch.long, device=DEVICE))
    expected = (int((q_src[0, 0] == ar).sum()), {c: int((count[0, 0] == c).sum()) for c in (1, 2)})
    with count_host_reads() as reads:
        lay = cl.class_layout(q_src, k_src, expected=expected)
    assert not reads and bool(lay.valid), dict(reads)


@pytest.mark.parametrize("grid_size", [8, 16])
def test_size_grid_puts_every_class_call_on_the_grid_and_stays_exact(grid_size, monkeypatch):
    """``SIZE_GRID``: classes c >= 2 keep a multiple of G keys (the rest demoted), so class 1 lands on
    N mod G + a multiple of G, and kept query rows are padded to a multiple of G: every SDPA call has a shape
    on the grid (cuDNN's plan cache is keyed on exact sizes); the result is the same plan's, exactly."""
    B, H, N, D = 1, 4, 90, 64
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(B, H, N, D, generator=g).to(DEVICE) for _ in range(3))
    x = smooth(1, H, (3, 5, 6), D)
    q_src, k_src = build_token_plan(x, x, grid=(3, 5, 6), thresholds={"t": 0.6, "y": 0.6, "x": 0.6}, budget=0.4,
                                    fused=False)[:2]
    monkeypatch.setattr(cl, "MIN_CLASS_KEYS", 1)
    monkeypatch.setattr(cl, "PAD_LIMIT", 100.0)
    base = cl.class_layout(q_src, k_src)
    assert base.reason is None and len(base.classes) >= 2
    monkeypatch.setattr(cl, "SIZE_GRID", grid_size)
    lay = cl.class_layout(q_src, k_src)
    assert lay.reason is None
    for c, n in zip(lay.classes, lay.sizes):
        assert (n - (N if c == 1 else 0)) % grid_size == 0, (c, n)
    assert lay.mq % grid_size == 0 or lay.mq == N
    assert lay.sizes != base.sizes and sum(lay.sizes) >= sum(base.sizes)  # demotion only adds entries
    got = cl.token_attention_classes(q, k, v, q_src.int(), k_src.int(), scale=D ** -0.5, layout=lay)
    assert_close_to_reference(got, q, k, v, q_src, k_src)
