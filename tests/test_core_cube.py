"""The window-cube path of channel mode (CPU default) against the per-element source path."""

import pytest
import torch

import timeripple
from timeripple import detect, channel_mode

CASES = [
    (2, (3, 5, 7), torch.float32),
    (2, (4, 4, 4), torch.bfloat16),
    (2, (1, 3, 2), torch.float16),
    (3, (4, 7, 3), torch.float32),
    (3, (3, 3, 3), torch.float16),
    (4, (5, 4, 8), torch.float32),
]
THRESHOLDS = [{"t": 0.5, "y": 0.5, "x": 0.5}, {"t": 0.8, "x": 0.3}, {"y": 1.0}, {"t": 0.4, "y": 0.0, "x": 0.6}]
PRIORITIES = [("t", "y", "x"), ("x", "t", "y"), ("y", "x", "t")]


@pytest.mark.parametrize("window,grid,dtype", CASES)
def test_cube_path_equals_source_path(window, grid, dtype):
    n = grid[0] * grid[1] * grid[2]
    for priority in PRIORITIES:
        for th in THRESHOLDS:
            x = torch.randn(2, 3, n, 8).to(dtype)
            x[0, 0, min(3, n - 1), 2] = float("nan")
            x[1, 2, min(5, n - 1), 1] = float("inf")
            src, via = detect.detect_channel_sources(x, grid, th, window=window, priority=priority)
            expected = channel_mode.apply_sources(x, src, 0)
            out, counts = channel_mode.cube_channel_reuse(x, grid, th, window=window, priority=priority)
            idx = torch.arange(n).view(1, 1, -1, 1)
            assert torch.equal(out.nan_to_num(7.0), expected.nan_to_num(7.0)), (window, grid, priority, th)
            assert torch.equal(counts[:, :, 0], (src != idx).sum(2))
            for a in range(3):
                assert torch.equal(counts[:, :, 1 + a], (via == a).sum(2))
            assert counts[:, :, 0].sum() > 0, "random data at these thresholds must reuse something"


def test_cube_path_support_rule():
    assert channel_mode.cube_path_supported((3, 5, 7), 2)
    assert channel_mode.cube_path_supported((4, 7, 3), 3)
    assert not channel_mode.cube_path_supported((5, 4, 8), 3)  # 5 % 3 == 2: a partial window of size 2


def test_cube_path_on_the_cpu_only():
    """On an accelerator the cube path is launch-bound (~K³ small ops per side: window 8 took over 40 s for
    one tiny-model evaluation on an H200); the per-element source path is used there instead."""
    assert channel_mode.cube_path_preferred("cpu", (9, 16, 16), 8)
    assert channel_mode.cube_path_preferred(torch.device("cpu"), (9, 16, 16), 2)
    for device in ("cuda", "cuda:0", "meta"):
        assert not channel_mode.cube_path_preferred(device, (9, 16, 16), 2)
        assert not channel_mode.cube_path_preferred(device, (9, 16, 16), 8)
    assert not channel_mode.cube_path_preferred("cpu", (5, 4, 8), 3)  # not supported: a partial window of size 2


@pytest.mark.parametrize("text_position", ["before", "after"])
def test_ripple_attention_same_with_and_without_cube_path(monkeypatch, text_position):
    grid, text = (3, 4, 5), 6
    q, k, v = (torch.randn(2, 2, 60 + text, 16) for _ in range(3))
    kw = dict(grid=grid, threshold=0.6, text_len=text, text_position=text_position, return_stats=True)
    out_cube, st_cube = timeripple.ripple_attention(q, k, v, **kw)
    monkeypatch.setattr(channel_mode, "cube_path_supported", lambda g, w: False)
    out_src, st_src = timeripple.ripple_attention(q, k, v, **kw)
    assert torch.equal(out_cube, out_src)
    assert torch.allclose(st_cube.qk_savings, st_src.qk_savings, rtol=0, atol=1e-12)
    assert st_cube.qk_savings_mean > 0
    for a in "tyx":
        assert st_cube.reused_fraction_q[a] == pytest.approx(st_src.reused_fraction_q[a], abs=1e-12)
        assert st_cube.reused_fraction_k[a] == pytest.approx(st_src.reused_fraction_k[a], abs=1e-12)
