"""Each example's ``--tiny`` path runs end to end: two videos saved, savings and PSNR reported."""

import importlib
import math
import os
import sys

import pytest

EXAMPLES = os.path.join(os.path.dirname(__file__), os.pardir, "examples")
sys.path.insert(0, EXAMPLES)


@pytest.mark.parametrize("name", ["wan_t2v", "wan22_t2v", "hunyuan_video_t2v", "cogvideox_t2v", "ltx_t2v", "mochi_t2v"])
def test_example_tiny(name, tmp_path, capsys):
    example = importlib.import_module(name)
    result = example.main(["--tiny", "--output", str(tmp_path)])
    printed = capsys.readouterr().out
    assert 0 < result["qk_savings"] < 1
    assert math.isfinite(result["psnr_db"])  # differs from dense, so not infinite
    assert len(result["paths"]) == 2 and all(os.path.exists(p) for p in result["paths"])
    assert "PSNR" in printed and "savings" in printed
