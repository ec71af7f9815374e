"""Fused channel-mode kernel: bitwise against the core's torch path, counts, stats, dispatch, bad input.

On the CPU the kernel runs under ``TRITON_INTERPRET=1`` (set by conftest) on small shapes; on a GPU
the same tests run on CUDA, plus a large HunyuanVideo-sized check that logs the time of the fused
detection against SDPA (``pytest --log-cli-level=INFO`` shows it).
"""

import logging
import math

import pytest
import torch
import torch.nn.functional as F

import timeripple
from _core_helpers import pick_threshold, structured, video_slice, with_text
from conftest import requires_cuda
from timeripple import attention
from timeripple.channel_mode import channel_reuse_counts as channel_reuse_torch
from timeripple.kernels.channel_fused import channel_reuse_fused

logger = logging.getLogger(__name__)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]

CASES = [  # grid, window, axes, priority, text_len, text_position, B, H, D
    ((3, 5, 7), 2, ("t", "y", "x"), ("t", "y", "x"), 0, "after", 2, 2, 16),
    ((4, 3, 5), 2, ("y", "x"), ("x", "y", "t"), 3, "before", 1, 2, 16),
    ((5, 4, 3), 2, ("t",), ("t", "y", "x"), 4, "after", 1, 1, 24),
    ((3, 5, 7), 3, ("t", "y", "x"), ("y", "t", "x"), 2, "after", 1, 2, 16),
    ((5, 6, 4), 4, ("t", "x"), ("x", "t", "y"), 0, "after", 2, 1, 8),
    ((1, 3, 9), 2, ("t", "y", "x"), ("y", "x", "t"), 5, "before", 1, 2, 16),
]


def _inputs(case, dtype, seed=0):
    grid, window, axes, priority, text_len, pos, B, H, D = CASES[case]
    q = with_text(structured(B, H, grid, D, seed=seed), text_len, pos, seed=seed + 10).to(dtype)
    k = with_text(structured(B, H, grid, D, seed=seed + 1), text_len, pos, seed=seed + 11).to(dtype)
    videos = [video_slice(x, text_len, pos) for x in (q, k)]
    # per-axis thresholds away from every Δ value, so float rounding never flips a decision
    thresholds = {a: pick_threshold(videos, grid, a, window, 0.25 + 0.2 * i) if grid["tyx".index(a)] > 1
                  else 0.3 for i, a in enumerate(axes)}  # a length-1 axis has no window to check
    return q.to(DEVICE), k.to(DEVICE), thresholds


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_fused_equals_torch_path(case, dtype):
    grid, window, axes, priority, text_len, pos, B, H, D = CASES[case]
    q, k, thresholds = _inputs(case, dtype, seed=case)
    q_t, k_t, counts = channel_reuse_fused(q, k, grid=grid, thresholds=thresholds, text_len=text_len,
                                           text_position=pos, window=window, priority=priority)
    assert q_t.dtype == dtype and counts.shape == (2, B, H, 4, D)
    for side, (x, x_t) in enumerate(((q, q_t), (k, k_t))):
        ref, ref_counts = channel_reuse_torch(video_slice(x, text_len, pos), grid, thresholds, window, priority)
        video = video_slice(x_t, text_len, pos)
        assert torch.equal(video, ref), f"side {side}: {(video != ref).sum().item()} elements differ"
        assert torch.equal(counts[side], ref_counts), f"side {side}: counts differ"
        text = slice(0, text_len) if pos == "before" else slice(x.shape[2] - text_len, None)
        assert torch.equal(x_t[:, :, text], x[:, :, text])
        reused = ref_counts[:, :, 0].sum().item() / video.numel()
        assert 0.05 < reused < 0.95, f"reused fraction {reused:.3f}: the case tests nothing"
        assert not torch.equal(video, video_slice(x, text_len, pos))


@pytest.mark.parametrize("text_len,pos", [(0, "after"), (6, "after"), (6, "before")])
def test_ripple_attention_dispatch_equals_torch_path(monkeypatch, text_len, pos):
    grid, B, H, D = (3, 4, 5), 2, 2, 16
    q = with_text(structured(B, H, grid, D, seed=3), text_len, pos, seed=4).to(DEVICE)
    k = with_text(structured(B, H, grid, D, seed=5), text_len, pos, seed=6).to(DEVICE)
    v = torch.randn(q.shape, device=DEVICE)
    kw = dict(grid=grid, threshold={"t": 0.31, "y": 0.23, "x": 0.27}, text_len=text_len, text_position=pos,
              priority=("y", "t", "x"), return_stats=True)
    monkeypatch.setattr(attention, "_FUSED_ON_CPU", True)
    calls = []
    real = attention._fused_channel_kernels
    monkeypatch.setattr(attention, "_fused_channel_kernels", lambda *a: calls.append(1) or real(*a))
    out, stats = timeripple.ripple_attention(q, k, v, **kw)
    assert calls and real(q, k, 2, None) is not None  # the fused path ran
    monkeypatch.setattr(attention, "_fused_channel_kernels", lambda *a: None)
    ref, ref_stats = timeripple.ripple_attention(q, k, v, **kw)
    assert torch.equal(out, ref)
    assert torch.equal(stats.qk_savings, ref_stats.qk_savings) and stats.qk_savings.dtype == torch.float64
    assert stats.qk_savings.device.type == "cpu" and 0.05 < stats.qk_savings_mean < 0.95
    assert stats.reused_fraction_q == ref_stats.reused_fraction_q
    assert stats.reused_fraction_k == ref_stats.reused_fraction_k
    assert stats.qk_products == ref_stats.qk_products and stats.mode == "channel"
    plain = F.scaled_dot_product_attention(q, k, v)
    assert not torch.equal(out, plain)


def test_non_finite_values_never_pass():
    grid, B, H, D = (4, 4, 4), 1, 2, 16
    x = structured(B, H, grid, D, seed=7)
    x[0, 0, 5, 3] = math.nan
    x[0, 0, 21, :] = math.inf
    x[0, 1, 42, 7] = -math.inf
    x[0, 1, 43, 7] = -math.inf  # 42 and 43 share their x window: -inf - -inf is NaN, no pass either
    x = x.to(DEVICE)
    for theta in (1e9, math.inf):
        thresholds = {"t": theta, "y": theta, "x": theta}
        x_t, counts = channel_reuse_fused(x, x, grid=grid, thresholds=thresholds)[0::2]
        ref, ref_counts = channel_reuse_torch(x, grid, thresholds)
        assert torch.equal(x_t.nan_to_num(), ref.nan_to_num()) and torch.equal(counts[0], ref_counts)
        # non-finite elements are neither reused nor used as sources
        assert torch.isnan(x_t[0, 0, 5, 3]) and torch.isinf(x_t[0, 0, 21]).all()
        assert x_t[0, 1, 43, 7] == -math.inf and torch.isfinite(x_t[0, 1, 43, :7]).all()
        assert counts[0].sum() > 0.5 * x.numel()  # everything finite still passes


def test_non_contiguous_input_keeps_layout():
    grid, B, H, D = (3, 4, 5), 1, 3, 16
    x = structured(B, H, grid, D, seed=2).transpose(1, 2).contiguous().transpose(1, 2).to(DEVICE)  # (B, H, N, D) view
    assert not x.is_contiguous()
    thresholds = {"t": 0.3, "x": 0.2}
    x_t, _, counts = channel_reuse_fused(x, x, grid=grid, thresholds=thresholds, priority=("x", "t", "y"))
    ref, ref_counts = channel_reuse_torch(x, grid, thresholds, priority=("x", "t", "y"))
    assert x_t.stride() == x.stride()
    assert torch.equal(x_t, ref) and torch.equal(counts[0], ref_counts)


def test_stats_off_and_custom_op():
    grid = (2, 3, 4)
    x = structured(1, 2, grid, 16, seed=1).to(DEVICE)
    x_t, k_t, counts = channel_reuse_fused(x, x, grid=grid, thresholds={"t": 0.4}, stats=False)
    assert torch.equal(x_t, channel_reuse_torch(x, grid, {"t": 0.4})[0]) and counts.sum() == 0
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        fq = mode.from_tensor(x)
        a, b, c = channel_reuse_fused(fq, fq, grid=grid, thresholds={"t": 0.4})
        assert a.shape == x.shape and c.shape == (2, 1, 2, 4, 16) and c.dtype == torch.int32


def test_fallback_warns_once_per_reason(monkeypatch, caplog):
    grid = (2, 3, 4)
    q = structured(1, 2, grid, 16, seed=1).to(DEVICE)
    monkeypatch.setattr(attention, "_FUSED_ON_CPU", True)
    monkeypatch.setattr(attention, "_fallback_warned", set())
    with caplog.at_level(logging.WARNING, logger="timeripple.attention"):
        for _ in range(2):
            out = timeripple.ripple_attention(q, q, q, grid=grid, threshold=0.3, window=5)
            timeripple.ripple_attention(q, q, q, grid=grid, threshold=0.3, channel_alpha=1.0)
            g = q.clone().requires_grad_()
            out_g = timeripple.ripple_attention(g, g, g, grid=grid, threshold=0.3)
    reasons = [r.getMessage() for r in caplog.records if "falls back" in r.getMessage()]
    assert len(reasons) == 3 and "window 5" in reasons[0] and "channel_alpha" in reasons[1]
    assert "backward" in reasons[2] and out_g.grad_fn is not None
    assert out.shape == q.shape


def test_bad_input():
    x = structured(1, 2, (2, 3, 4), 16).to(DEVICE)
    with pytest.raises(ValueError, match="grid"):
        channel_reuse_fused(x, x, grid=(2, 3, 5), thresholds={"t": 0.3})
    with pytest.raises(ValueError, match="window 5"):
        channel_reuse_fused(x, x, grid=(2, 3, 4), thresholds={"t": 0.3}, window=5)
    with pytest.raises(ValueError, match="dtype"):
        channel_reuse_fused(x.double(), x.double(), grid=(2, 3, 4), thresholds={"t": 0.3})


# ----------------------------------------------------------------------------------------------
# GPU only: large shapes (the lead runs these)


def _time_ms(fn, reps=10):
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


@requires_cuda
@pytest.mark.parametrize("grid,H,text_len,pos", [((33, 34, 60), 24, 256, "after"), ((21, 30, 52), 12, 0, "after"),
                                                 ((13, 48, 85), 4, 226, "before")])
def test_large_shapes_cuda(grid, H, text_len, pos):
    D, dtype = 128, torch.bfloat16
    q = with_text(structured(1, H, grid, D, seed=0, noise=0.3), text_len, pos).to("cuda", dtype)
    k = with_text(structured(1, H, grid, D, seed=1, noise=0.3), text_len, pos).to("cuda", dtype)
    v = torch.randn_like(q)
    thresholds = {"t": 0.3, "y": 0.25, "x": 0.25}  # bf16 K=2: Δ = |a0 - a1| / 2 exactly on both paths
    q_t, k_t, counts = channel_reuse_fused(q, k, grid=grid, thresholds=thresholds, text_len=text_len,
                                           text_position=pos)
    for side, (x, x_t) in enumerate(((q, q_t), (k, k_t))):
        video = video_slice(x, text_len, pos)
        ref, ref_counts = channel_reuse_torch(video, grid, thresholds)
        got = video_slice(x_t, text_len, pos)
        assert torch.equal(got, ref), f"side {side}: {(got != ref).sum().item()} of {ref.numel()} differ"
        assert torch.equal(counts[side], ref_counts)
        del ref, ref_counts
    kw = dict(grid=grid, threshold=thresholds, text_len=text_len, text_position=pos)
    fused = _time_ms(lambda: channel_reuse_fused(q, k, grid=grid, thresholds=thresholds, text_len=text_len,
                                                 text_position=pos, stats=False))
    sdpa = _time_ms(lambda: F.scaled_dot_product_attention(q, k, v))
    mode = _time_ms(lambda: timeripple.ripple_attention(q, k, v, **kw))
    logger.info("channel mode %s H=%d text=%d on %s: fused detection %.3f ms, dense SDPA %.3f ms, "
                "ripple_attention(channel) %.3f ms (%.1f%% of dense)", grid, H, text_len,
                torch.cuda.get_device_name(), fused, sdpa, mode, 100 * mode / sdpa)
    assert fused > 0 and sdpa > 0
