"""ripple_attention, channel mode: against the float64 reference, plain SDPA, closed forms, bad input."""

import math

import pytest
import torch
import torch.nn.functional as F

import timeripple
from _core_helpers import firsts_on_all_axes, pick_alpha, pick_threshold, structured, video_slice, with_text
from timeripple.attention import channel_reuse
from timeripple.testing import reference_attention

CASES = [  # grid, window, text_len, text_position, B, H
    ((3, 5, 7), 2, 0, "after", 2, 2),
    ((3, 5, 7), 3, 4, "after", 1, 3),
    ((4, 3, 5), 4, 5, "before", 2, 2),
    ((5, 2, 3), 2, 3, "before", 2, 1),
    ((2, 4, 6), 3, 0, "after", 1, 2),
]


def _qkv(grid, text_len, text_position, B, H, D=8, seed=0):
    q = with_text(structured(B, H, grid, D, seed=seed), text_len, text_position, seed=seed + 10)
    k = with_text(structured(B, H, grid, D, seed=seed + 1), text_len, text_position, seed=seed + 11)
    v = torch.randn(q.shape, generator=torch.Generator().manual_seed(seed + 2))
    return q, k, v


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("per_axis", [False, True])
def test_channel_mode_matches_reference(case, per_axis):
    grid, window, text_len, pos, B, H = CASES[case]
    q, k, v = _qkv(grid, text_len, pos, B, H, seed=case)
    videos = [video_slice(x, text_len, pos) for x in (q, k)]
    if per_axis:
        threshold = {a: pick_threshold(videos, grid, a, window, 0.3 + 0.2 * i) for i, a in enumerate("ty")}
    else:
        threshold = pick_threshold(videos, grid, "t", window, 0.5)
    kw = dict(grid=grid, threshold=threshold, text_len=text_len, text_position=pos, window=window)
    out, stats = timeripple.ripple_attention(q, k, v, return_stats=True, **kw)
    ref, info = reference_attention(q, k, v, **kw)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stats.qk_savings, info["qk_savings"], rtol=1e-12, atol=1e-12)
    exact = F.scaled_dot_product_attention(q, k, v)
    assert (out - exact).abs().max() > 1e-4  # reuse really happened
    assert 0.05 < stats.qk_savings_mean < 0.99
    assert stats.qk_products == B * H * q.shape[2] ** 2 * q.shape[3]
    if per_axis:
        assert set(stats.reused_fraction_q) == {"t", "y", "x"} and stats.reused_fraction_q["x"] == 0


def test_channel_alpha_matches_reference():
    grid, window = (3, 4, 5), 2
    q, k, v = _qkv(grid, 3, "after", 1, 2)
    alpha = pick_alpha([video_slice(x, 3, "after") for x in (q, k)], grid, ("t", "y", "x"), window)
    kw = dict(grid=grid, threshold=0.3, text_len=3, window=window, channel_alpha=alpha)
    out, stats = timeripple.ripple_attention(q, k, v, return_stats=True, **kw)
    ref, info = reference_attention(q, k, v, **kw)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stats.qk_savings, info["qk_savings"])
    assert stats.qk_savings_mean > 0.05


def test_masks_and_scale_match_reference():
    grid = (3, 3, 4)
    q, k, v = _qkv(grid, 4, "after", 2, 2)
    N = q.shape[2]
    key_mask = torch.ones(2, 1, 1, N, dtype=torch.bool)
    key_mask[1, ..., -2:] = False  # padded text keys in batch 1
    additive = torch.randn(1, 2, N, N) * 0.3
    for mask in (key_mask, additive):
        kw = dict(grid=grid, threshold=0.4, text_len=4, attn_mask=mask, scale=0.2)
        out = timeripple.ripple_attention(q, k, v, **kw)
        ref, _ = reference_attention(q, k, v, **kw)
        torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pos", ["before", "after"])
def test_threshold_zero_and_none_are_plain_sdpa(pos):
    q, k, v = _qkv((3, 5, 7), 6, pos, 2, 2)
    mask = torch.randn(1, 1, q.shape[2], q.shape[2])
    exact = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3)
    key_mask = torch.rand(2, 1, 1, q.shape[2]) > 0.2
    exact_key = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
    for threshold in (0, 0.0, {"t": 0.0, "y": 0}, None):
        out = timeripple.ripple_attention(q, k, v, grid=(3, 5, 7), threshold=threshold, text_len=6,
                                          text_position=pos, attn_mask=mask, scale=0.3)
        assert torch.equal(out, exact)
        out = timeripple.ripple_attention(q, k, v, grid=(3, 5, 7), threshold=threshold, text_len=6,
                                          text_position=pos, attn_mask=key_mask, mode="token")
        assert torch.equal(out, exact_key)
    _, stats = timeripple.ripple_attention(q, k, v, grid=(3, 5, 7), threshold=None, text_len=6,
                                           text_position=pos, return_stats=True)
    assert stats.qk_savings_mean == 0 and stats.mode == "dense"


@pytest.mark.parametrize("grid,window,axes,text_len", [((3, 5, 7), 2, ("t", "y", "x"), 5),
                                                       ((4, 5, 3), 3, ("t", "x"), 0),
                                                       ((5, 2, 6), 4, ("y",), 2)])
def test_huge_threshold_closed_form(grid, window, axes, text_len):
    # Every video token that is non-first on some checked axis is reused in every channel. The
    # computed video tokens are those first on every checked axis: F = prod_checked ceil(L/K) *
    # prod_unchecked L. With r = Nv - F reused per channel on both sides and N = Nv + text_len,
    # skipped products per channel = N² - (N - r)², so qk_savings = 1 - ((N - r) / N)² in every head.
    B, H, D = 2, 3, 4
    q, k, v = _qkv(grid, text_len, "after", B, H, D=D)
    out, stats = timeripple.ripple_attention(q, k, v, grid=grid, threshold=1e9, text_len=text_len,
                                             axes=axes, window=window, return_stats=True)
    nv, N = math.prod(grid), math.prod(grid) + text_len
    r = nv - firsts_on_all_axes(grid, window, axes)
    expected = 1 - ((N - r) / N) ** 2
    torch.testing.assert_close(stats.qk_savings, torch.full((H,), expected, dtype=torch.float64))
    total = sum(stats.reused_fraction_q.values())
    assert total == pytest.approx(r / nv)


def test_text_tokens_unchanged_and_sources_computed():
    grid, text_len = (3, 4, 5), 7
    for pos in ("before", "after"):
        q, k, _ = _qkv(grid, text_len, pos, 2, 2)
        q_t, k_t, src_q, _, via_q, _ = channel_reuse(
            q, k, grid=grid, thresholds={"t": 0.5, "y": 0.5, "x": 0.5}, text_len=text_len, text_position=pos,
            window=2, priority=("t", "y", "x"), channel_alpha=None,
        )
        text = slice(0, text_len) if pos == "before" else slice(q.shape[2] - text_len, None)
        assert torch.equal(q_t[:, :, text], q[:, :, text]) and torch.equal(k_t[:, :, text], k[:, :, text])
        assert torch.equal(torch.gather(src_q, 2, src_q), src_q)  # every source is computed
        video = video_slice(q, text_len, pos)
        assert torch.equal(video_slice(q_t, text_len, pos), torch.gather(video, 2, src_q))
        assert 0.1 < (via_q >= 0).float().mean() < 0.95


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 3e-3), (torch.bfloat16, 2e-2)])
def test_low_precision_close_to_fp32(dtype, tol):
    grid = (3, 5, 7)
    q, k, v = _qkv(grid, 4, "after", 1, 2, D=16)
    kw = dict(grid=grid, threshold=0.3, text_len=4)
    ref = timeripple.ripple_attention(q, k, v, **kw)
    out = timeripple.ripple_attention(q.to(dtype), k.to(dtype), v.to(dtype), **kw)
    assert out.dtype == dtype
    # tolerance: a few times plain low-precision SDPA's own error against fp32
    plain = F.scaled_dot_product_attention(q.to(dtype), k.to(dtype), v.to(dtype)).float()
    plain_err = (plain - F.scaled_dot_product_attention(q, k, v)).abs().max().item()
    err = (out.float() - ref).abs()
    assert err.mean() < tol and err.max() < 4 * plain_err + 0.1, f"max {err.max():.3g} mean {err.mean():.3g}"


def test_bad_inputs():
    q, k, v = _qkv((2, 3, 4), 2, "after", 1, 2)
    ok = dict(grid=(2, 3, 4), threshold=0.3, text_len=2)
    bad = [
        (dict(grid=(2, 3, 5)), ValueError, "grid"),
        (dict(grid=(2, 3)), ValueError, "grid"),
        (dict(text_len=3), ValueError, "grid"),
        (dict(text_len=-1), ValueError, "text_len"),
        (dict(text_position="middle"), ValueError, "text_position"),
        (dict(threshold=-0.1), ValueError, "threshold"),
        (dict(threshold=math.nan), ValueError, "threshold"),
        (dict(threshold={"t": 0.2, "z": 0.1}), ValueError, "threshold"),
        (dict(threshold="0.3"), TypeError, "threshold"),
        (dict(window=1), ValueError, "window"),
        (dict(window=2.0), ValueError, "window"),
        (dict(axes=("t", "w")), ValueError, "axes"),
        (dict(axes=("t", "t")), ValueError, "axes"),
        (dict(axes=()), ValueError, "axes"),
        (dict(priority=("t", "y")), ValueError, "priority"),
        (dict(mode="fast"), ValueError, "mode"),
        (dict(channel_alpha=-1.0), ValueError, "channel_alpha"),
        (dict(channel_alpha=1.0, mode="token"), ValueError, "channel_alpha"),
        (dict(budget=0.5), ValueError, "budget"),
        (dict(budget=1.5, mode="token"), ValueError, "budget"),
        (dict(token_criterion="loose", mode="token"), ValueError, "token_criterion"),
        (dict(token_fraction=0.0, mode="token"), ValueError, "token_fraction"),
        (dict(attn_mask=torch.ones(3, 3, dtype=torch.bool)), ValueError, "attn_mask"),
        (dict(attn_mask=torch.ones(1, 1, 26, 26), mode="token"), ValueError, "channel"),
    ]
    for extra, exc, name in bad:
        with pytest.raises(exc, match=name):
            timeripple.ripple_attention(q, k, v, **{**ok, **extra})
    with pytest.raises(ValueError, match="k.shape"):
        timeripple.ripple_attention(q, k[:, :1], v, **ok)
    with pytest.raises(ValueError, match="k.dtype"):
        timeripple.ripple_attention(q, k.half(), v, **ok)
    with pytest.raises(ValueError, match="v.shape"):
        timeripple.ripple_attention(q, k, v[:, :, :5], **ok)
    with pytest.raises(ValueError, match="q.shape"):
        timeripple.ripple_attention(q[0], k[0], v[0], **ok)
    with pytest.raises(TypeError, match="q"):
        timeripple.ripple_attention(q.numpy(), k, v, **ok)
    with pytest.raises(ValueError, match="Fix:"):  # messages carry the fix
        timeripple.ripple_attention(q, k, v, **{**ok, "window": 0})


def test_device_mismatch():
    q, k, v = _qkv((2, 3, 4), 0, "after", 1, 1)
    other = "cuda" if torch.cuda.is_available() else "meta"
    with pytest.raises(ValueError, match="k.device"):
        timeripple.ripple_attention(q, k.to(other), v, grid=(2, 3, 4), threshold=0.3)
    with pytest.raises(ValueError, match="attn_mask.device"):
        timeripple.ripple_attention(q, k, v, grid=(2, 3, 4), threshold=0.3,
                                    attn_mask=torch.ones(1, 1, 1, 24, dtype=torch.bool, device=other))


@pytest.mark.parametrize("mode", ["channel", "token"])
def test_non_contiguous_inputs_give_the_same_result(mode):
    grid = (3, 4, 5)
    q, k, v = _qkv(grid, 2, "after", 2, 2)
    views = [x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v)]  # (B, N, H, D) storage
    assert not views[0].is_contiguous()
    kw = dict(grid=grid, threshold=0.3, text_len=2, mode=mode)
    torch.testing.assert_close(timeripple.ripple_attention(*views, **kw), timeripple.ripple_attention(q, k, v, **kw))
