"""Fused token detection kernel against the plain-torch detection of timeripple.detect."""

import math

import pytest
import torch

from timeripple.detect import axis_score_table as token_axis_scores_torch
from timeripple.kernels.detect_fused import token_axis_scores

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def smooth(B, H, grid, D, noise, dtype):
    T, Hg, Wg = grid
    base = torch.randn(B, H, 1, 1, 1, D)
    x = base + noise * torch.randn(B, H, T, Hg, Wg, D)
    return x.reshape(B, H, T * Hg * Wg, D).to(dtype).to(DEVICE)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("criterion", ["strict", "rms"])
@pytest.mark.parametrize("grid,window", [((3, 5, 7), 2), ((4, 3, 5), 3), ((2, 4, 4), 2), ((1, 3, 4), 2), ((4, 2, 9), 2)])
def test_fused_scores_match_torch_detection(dtype, criterion, grid, window):
    B, H, D = 2, 2, 64
    x = smooth(B, H, grid, D, 0.3, dtype)
    x[0, 1, 5, 3] = float("nan")
    x[1, 0, 9, 0] = float("inf")
    got = token_axis_scores(x, grid, window, criterion)
    want = token_axis_scores_torch(x, grid, window, criterion)
    assert torch.equal(torch.isnan(got), torch.isnan(want))
    both = ~torch.isnan(want)
    err = (got[both] - want[both]).abs()
    assert err.max() <= 1e-5 * want[both].abs().max() + 1e-6, f"max err {err.max():.3e}, mean {err.mean():.3e}"


def test_fused_scores_axes_subset_and_views():
    grid = (3, 4, 6)
    Nv = math.prod(grid)
    q = torch.randn(1, 2, Nv + 5, 128, device=DEVICE)  # text after: pass the video view
    got = token_axis_scores(q[:, :, :Nv], grid, 2, "strict", axes=("t",))
    want = token_axis_scores_torch(q[:, :, :Nv].contiguous(), grid, 2, "strict", axes=("t",))
    assert torch.isnan(got[..., 1:]).all()
    assert torch.allclose(got, want, equal_nan=True, atol=1e-6)


def test_fused_scores_threshold_decisions_equal_torch():
    grid = (5, 6, 7)
    x = smooth(1, 3, grid, 64, 0.1, torch.bfloat16)
    got, want = token_axis_scores(x, grid), token_axis_scores_torch(x, grid)
    theta = want.nanmedian()
    assert torch.equal(got < theta, want < theta)


def test_fused_scores_reject_fraction():
    with pytest.raises(ValueError, match="criterion"):
        token_axis_scores(torch.randn(1, 1, 8, 64, device=DEVICE), (2, 2, 2), 2, "fraction")
