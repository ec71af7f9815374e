"""The window-2 channel kernel (2x2x2 cube rows) against the window-cube torch path, bit for bit.

Runs under TRITON_INTERPRET=1 on the CPU (tests/conftest.py), on CUDA when present."""

import pytest
import torch

from timeripple import channel_mode
from timeripple.kernels.channel_fused_pairs import launch_pairs

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
GRIDS = [(3, 4, 5), (1, 1, 9), (2, 3, 17)]
PRIORITIES = [("t", "y", "x"), ("x", "t", "y"), ("y", "x", "t")]
THRESHOLDS = [{"t": 0.5, "y": 0.5, "x": 0.5}, {"t": 0.8, "x": 0.3}, {"y": 1.0}]


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_pairs_kernel_matches_cube_path(grid, dtype):
    n = grid[0] * grid[1] * grid[2]
    reused = 0
    for priority, th in zip(PRIORITIES, THRESHOLDS):
        x = torch.randn(2, 2, n, 24).to(dtype)
        x[0, 1, min(4, n - 1), 3] = float("inf")
        x[1, 0, 0, 5] = float("nan")
        x = x.to(DEVICE)
        out = torch.full_like(x, 123.0)  # poison: every element must be written
        counts = torch.zeros(2, 2, 4, 24, dtype=torch.int32, device=DEVICE)
        launch_pairs(x, out, counts, grid, th, priority)
        expected, expected_counts = channel_mode.cube_channel_reuse(x.cpu(), grid, th, window=2, priority=priority)
        got = out.cpu()
        diff = (got.nan_to_num(9.0) - expected.nan_to_num(9.0)).abs().max().item()
        assert torch.equal(got.nan_to_num(9.0), expected.nan_to_num(9.0)), (grid, priority, th, diff)
        assert torch.equal(counts.cpu().long(), expected_counts), (grid, priority, th)
        reused += int(expected_counts[:, :, 0].sum())
    assert reused > 0, "these thresholds must reuse something on random data"


def test_pairs_kernel_without_counts_and_strided_input():
    grid = (3, 4, 6)
    base = torch.randn(1, 72, 3, 32).to(DEVICE)  # (B, N, H, D): a transposed view is not contiguous in N
    x = base.transpose(1, 2)
    out = torch.empty_like(x)
    launch_pairs(x, out, None, grid, {"t": 0.6, "y": 0.6, "x": 0.6}, ("t", "y", "x"))
    expected, counts = channel_mode.cube_channel_reuse(x.cpu(), grid, {"t": 0.6, "y": 0.6, "x": 0.6}, window=2,
                                                priority=("t", "y", "x"))
    assert torch.equal(out.cpu(), expected)
    assert counts[:, :, 0].sum() > 0
