"""ripple_attention with empty tensors, odd dtypes and values at the edge (issue 12): a clear error or
the right result, never a crash inside torch or a NaN figure."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import timeripple

GRID = (2, 3, 4)


def _qkv(B=1, H=2, D=8, requires_grad=False):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(B, H, math.prod(GRID), D, generator=g).requires_grad_(requires_grad) for _ in range(3)]


@pytest.mark.parametrize("mode", ["channel", "token"])
def test_empty_batch_gives_an_empty_output_and_zero_savings(mode):
    q, k, v = _qkv(B=0)
    out, stats = timeripple.ripple_attention(q, k, v, grid=GRID, threshold=0.5, mode=mode, return_stats=True)
    assert out.shape == q.shape
    assert stats.qk_savings_mean == 0.0 and stats.qk_products == 0


@pytest.mark.parametrize("mode", ["channel", "token"])
def test_zero_head_dim_is_refused(mode):
    q, k, v = _qkv(D=0)
    with pytest.raises(ValueError, match=r"`q.shape`.*head dim D must be >= 1"):
        timeripple.ripple_attention(q, k, v, grid=GRID, threshold=0.5, mode=mode)


def test_integer_mask_is_a_type_error_with_the_fix():
    q, k, v = _qkv()
    mask = torch.ones(1, 1, 1, q.shape[2], dtype=torch.int64)
    with pytest.raises(TypeError, match=r"`attn_mask.dtype`.*mask.bool\(\)"):
        timeripple.ripple_attention(q, k, v, grid=GRID, threshold=0.5, attn_mask=mask)


def test_token_mode_backward_is_refused_as_inference_only():
    q, k, v = _qkv(requires_grad=True)
    with pytest.raises(ValueError, match="inference only"):
        timeripple.ripple_attention(q, k, v, grid=GRID, threshold=0.5, mode="token")
    with torch.no_grad():  # fine without grad
        timeripple.ripple_attention(q, k, v, grid=GRID, threshold=0.5, mode="token")
    out = timeripple.ripple_attention(q, k, v, grid=GRID, threshold=0.5, mode="channel")
    out.sum().backward()  # channel mode (torch path) has a backward
    assert q.grad is not None


def test_numpy_ints_for_grid_and_text_len():
    q, k, v = _qkv()
    grid = tuple(np.int64(g) for g in GRID)
    out = timeripple.ripple_attention(q, k, v, grid=grid, threshold=0.0, text_len=np.int32(0))
    assert torch.equal(out, F.scaled_dot_product_attention(q, k, v))


@pytest.mark.parametrize("bad", [{"threshold": math.inf}, {"threshold": {"t": math.inf}}, {"scale": math.inf},
                                 {"scale": -math.inf}])
def test_infinite_threshold_or_scale_is_refused(bad):
    q, k, v = _qkv()
    kw = {"threshold": 0.5, **bad}
    with pytest.raises(ValueError, match="finite"):
        timeripple.ripple_attention(q, k, v, grid=GRID, **kw)
    with pytest.raises(ValueError, match="finite"):  # as the config does
        timeripple.TimeRippleConfig(threshold_end=math.inf)


@pytest.mark.parametrize("value", ["no", 1, None])
def test_return_stats_must_be_a_bool(value):
    q, k, v = _qkv()
    with pytest.raises(TypeError, match="`return_stats` must be a bool"):
        timeripple.ripple_attention(q, k, v, grid=GRID, threshold=0.5, return_stats=value)
