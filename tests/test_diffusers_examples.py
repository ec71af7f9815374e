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


@pytest.mark.skipif(sys.platform == "win32", reason="torchrun with gloo")
def test_multi_gpu_example_tiny_on_two_cpu_ranks(tmp_path):
    """``examples/multi_gpu.py --tiny`` under torchrun (2 CPU ranks, gloo): both videos saved, savings counted."""
    import re
    import signal
    import subprocess

    src = os.path.dirname(importlib.import_module("timeripple").__path__[0])
    path = os.pathsep.join(filter(None, (src, os.environ.get("PYTHONPATH"))))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               os.path.join(EXAMPLES, "multi_gpu.py"), "--family", "cogvideox", "--tiny", "--out", str(tmp_path)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and its two ranks
        stdout, stderr = proc.communicate()
    assert proc.returncode == 0, stderr[-3000:]
    found = re.search(r"savings ([\d.]+)% \(mean over ranks\) \| PSNR vs dense ([\d.]+) dB", stdout)
    assert found, stdout[-2000:]
    assert 0 < float(found.group(1)) < 100 and math.isfinite(float(found.group(2)))
    assert len(os.listdir(tmp_path)) == 2  # the dense and the TimeRipple video (mp4 or a folder of frames)
