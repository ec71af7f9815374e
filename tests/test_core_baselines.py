"""The Fig. 7 baselines: magnitude masking and skip (zero instead of reuse)."""

import math

import pytest
import torch
import torch.nn.functional as F

import timeripple
import timeripple.baselines
from _core_helpers import structured, video_slice, with_text
from timeripple.testing import reference_sources


def _qkv(grid, text_len, pos, B=2, H=2, D=8, seed=0):
    q = with_text(structured(B, H, grid, D, seed=seed), text_len, pos, seed=seed + 10)
    k = with_text(structured(B, H, grid, D, seed=seed + 1), text_len, pos, seed=seed + 11)
    v = torch.randn(q.shape, generator=torch.Generator().manual_seed(seed + 2))
    return q, k, v


@pytest.mark.parametrize("pos", ["before", "after"])
def test_magnitude_mask_zeroes_the_smallest_video_channels(pos):
    grid, text_len, frac = (3, 4, 5), 5, 0.3
    q, k, v = _qkv(grid, text_len, pos)
    out, stats = timeripple.baselines.magnitude_mask_attention(q, k, v, fraction=frac, grid=grid, text_len=text_len,
                                                     text_position=pos, return_stats=True)
    # independent construction: per (b, h) sort |video| and zero the first round(frac * Nv * D)
    masked = []
    for x in (q, k):
        x_m = x.clone().double()
        video = video_slice(x_m, text_len, pos)  # a view into x_m
        n_zero = round(frac * 60 * 8)
        for b in range(2):
            for h in range(2):
                flat = video[b, h].reshape(-1)
                flat[flat.abs().argsort()[:n_zero]] = 0
                assert (video[b, h] == 0).sum() == n_zero
        masked.append(x_m)
    ref = F.scaled_dot_product_attention(masked[0], masked[1], v.double())
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    # counted savings: per channel c, r_c zeroed elements on each side
    N, D = q.shape[2], q.shape[3]
    r_q = (video_slice(masked[0], text_len, pos) == 0).sum(2).double()  # (B, H, D)
    r_k = (video_slice(masked[1], text_len, pos) == 0).sum(2).double()
    expected = ((N * N - (N - r_q) * (N - r_k)).sum(-1) / (N * N * D)).mean(0)
    torch.testing.assert_close(stats.qk_savings, expected)
    assert stats.mode == "magnitude" and stats.reused_fraction_q["magnitude"] == pytest.approx(0.3)


def test_magnitude_fraction_zero_is_sdpa_and_bad_input():
    q, k, v = _qkv((2, 3, 4), 2, "after")
    assert torch.equal(timeripple.baselines.magnitude_mask_attention(q, k, v, fraction=0.0, text_len=2),
                       F.scaled_dot_product_attention(q, k, v))
    for bad in (-0.1, 1.5, math.nan):
        with pytest.raises(ValueError, match="fraction"):
            timeripple.baselines.magnitude_mask_attention(q, k, v, fraction=bad)
    with pytest.raises(ValueError, match="grid"):
        timeripple.baselines.magnitude_mask_attention(q, k, v, fraction=0.5, grid=(2, 3, 3), text_len=2)
    with pytest.raises(ValueError, match="text_len"):
        timeripple.baselines.magnitude_mask_attention(q, k, v, fraction=0.5, text_len=99)


@pytest.mark.parametrize("grid,window,text_len,pos", [((3, 5, 7), 2, 4, "after"), ((4, 3, 5), 3, 3, "before")])
def test_skip_zeroes_exactly_what_ripple_reuses(grid, window, text_len, pos):
    q, k, v = _qkv(grid, text_len, pos, seed=3)
    kw = dict(grid=grid, threshold=0.3, text_len=text_len, text_position=pos, window=window)
    out, stats = timeripple.baselines.skip_attention(q, k, v, return_stats=True, **kw)
    _, ripple_stats = timeripple.ripple_attention(q, k, v, return_stats=True, **kw)
    torch.testing.assert_close(stats.qk_savings, ripple_stats.qk_savings)
    assert stats.reused_fraction_q == ripple_stats.reused_fraction_q and stats.mode == "skip"
    assert stats.qk_savings_mean > 0.1
    zeroed = []
    for x in (q, k):
        x_z = x.clone().double()
        video = video_slice(x_z, text_len, pos)
        src = reference_sources(video_slice(x, text_len, pos), grid, {a: 0.3 for a in "tyx"}, window=window)
        video[src != torch.arange(src.shape[2]).view(1, 1, -1, 1)] = 0
        zeroed.append(x_z)
    ref = F.scaled_dot_product_attention(zeroed[0], zeroed[1], v.double())
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


def test_reuse_beats_both_baselines_at_the_same_savings():
    # The claim of the paper's Fig. 7, on smooth structured input: reuse has far lower error.
    grid = (4, 6, 6)
    q, k, v = _qkv(grid, 0, "after", B=1, H=2, D=16, seed=5)
    exact = F.scaled_dot_product_attention(q, k, v)
    ripple, stats = timeripple.ripple_attention(q, k, v, grid=grid, threshold=0.15, return_stats=True)
    skip = timeripple.baselines.skip_attention(q, k, v, grid=grid, threshold=0.15)
    frac = sum(stats.reused_fraction_q.values())
    magnitude = timeripple.baselines.magnitude_mask_attention(q, k, v, fraction=frac)
    mse = {name: (o - exact).square().mean().item() for name, o in
           (("ripple", ripple), ("skip", skip), ("magnitude", magnitude))}
    assert 0 < mse["ripple"] < 0.5 * min(mse["skip"], mse["magnitude"]), mse
    assert torch.equal(timeripple.baselines.skip_attention(q, k, v, grid=grid, threshold=None), exact)
