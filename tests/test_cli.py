"""The `timeripple` console command: help texts, `configs`, `version`, a short `demo` run into a tmp dir,
the demo's files and table, and bad arguments (argparse errors, exit code 2, nothing generated)."""

import contextlib
import io
import json
import math
import re
import subprocess
import sys
from importlib.metadata import entry_points

import numpy as np
import pytest
import torch

import timeripple
from timeripple.cli import build_parser, main
from timeripple.demo import shipped_weights_dir
from timeripple.demo.loading import WEIGHTS_FILE
from timeripple.demo.run_demo import DemoResult, format_report, resolve_config, run_demo, save_outputs
from timeripple.diffusers import GenerationStats

TABLE_ROWS = (
    "wall time, cpu (s, measured)",
    "attention savings, generation (counted)",
    "attention savings, reusing steps (counted)",
    "PSNR vs dense (dB)",
    "SSIM vs dense",
    "adherence: colour",
    "adherence: shape",
    "adherence: direction",
)


def run_cli(*argv):
    """Run `main(argv)` in-process; returns (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exit_:
            code = exit_.code
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def weights_args(tmp_path_factory):
    """The shipped weights; random ones (same architecture) only while the shipped file is not built yet."""
    if (shipped_weights_dir() / WEIGHTS_FILE).is_file():
        return []
    from diffusers import FlowMatchEulerDiscreteScheduler

    from timeripple.demo import save_tiny_weights
    from timeripple.demo.model import SHIFT, build_tiny_transformer
    from timeripple.demo.text import build_text_encoder

    torch.manual_seed(0)
    _, encoder = build_text_encoder()
    folder = tmp_path_factory.mktemp("random_weights")
    save_tiny_weights(folder, build_tiny_transformer(), encoder, FlowMatchEulerDiscreteScheduler(shift=SHIFT),
                      dtype=torch.float32)
    return ["--weights", str(folder)]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, weights_args):
    """One short `timeripple demo` (4 steps: steps 1-2 reuse under wan2.1's scaled schedule)."""
    out_dir = tmp_path_factory.mktemp("demo") / "out"
    code, stdout, stderr = run_cli("demo", "--steps", "4", "--seed", "1", "--output", str(out_dir),
                                   "--no-progress", *weights_args)
    return code, stdout, stderr, out_dir


# -- help, configs, version ------------------------------------------------------------------------------


def test_help_lists_the_commands():
    code, out, _ = run_cli("--help")
    assert code == 0
    for command in ("demo", "configs", "version"):
        assert re.search(rf"^\s+{command}\s", out, re.M), out


def test_demo_help_documents_every_option_and_examples():
    code, out, _ = run_cli("demo", "--help")
    assert code == 0
    for option in ("--prompt", "--negative-prompt", "--seed", "--steps", "--guidance-scale", "--config", "--mode",
                   "--output", "--device", "--video-format", "--weights"):
        assert option in out, option
    assert "examples:" in out and "timeripple demo --prompt" in out
    assert "counted" in out and "measured" in out  # says which figures are which


def test_console_script_points_at_main():
    (entry,) = [e for e in entry_points(group="console_scripts") if e.name == "timeripple"]
    assert entry.value == "timeripple.cli:main" and entry.load() is main


def test_runs_as_a_module_in_a_subprocess():
    proc = subprocess.run([sys.executable, "-m", "timeripple.cli", "version"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"timeripple {timeripple.__version__}"


def test_configs_lists_every_bundled_config_with_its_schedule():
    code, out, _ = run_cli("configs")
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    for name in timeripple.list_configs():
        assert name in lines
    assert "θ 0.4 → 0.6" in lines["wan2.1"] and "ramp steps 10-48 of 50" in lines["wan2.1"]
    assert "dense steps 0-9 + last" in lines["hunyuan_video"]


# -- bad arguments: argparse errors, exit 2, before any model is loaded --------------------------------------


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "required: COMMAND"),
        (["demo", "--steps", "1"], "--steps: 1 is below the minimum 2"),
        (["demo", "--steps", "many"], "'many' is not an integer"),
        (["demo", "--seed", "-3"], "--seed: -3 is below the minimum 0"),
        (["demo", "--guidance-scale", "-1"], "must be >= 0"),
        (["demo", "--mode", "tokens"], "invalid choice: 'tokens'"),
        (["demo", "--video-format", "avi"], "invalid choice: 'avi'"),
        (["demo", "--device", "toaster"], "is not a torch device"),
        (["demo", "--config", "wan9"], "bundled configs are"),
        (["demo", "--config", "missing/file.yaml"], "no such config file"),
        (["demo", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    ],
)
def test_bad_arguments_exit_2_with_a_clear_message(argv, message):
    code, out, err = run_cli(*argv)
    assert code == 2
    assert message in err, err
    assert "TimeRipple demo" not in out


def test_output_that_is_a_file_is_rejected_before_generating(tmp_path):
    target = tmp_path / "taken"
    target.write_text("x")
    code, out, err = run_cli("demo", "--output", str(target), "--no-progress")
    assert code == 2 and "`--output`" in err and "not a folder" in err
    assert out == ""


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown when CUDA is missing")
def test_cuda_device_without_cuda_is_an_argument_error():
    code, _, err = run_cli("demo", "--device", "cuda")
    assert code == 2 and "CUDA is not available" in err


def test_library_entry_points_check_arguments_before_loading():
    with pytest.raises(TypeError, match="`prompt` must be a str"):
        run_demo(3)
    with pytest.raises(ValueError, match="`num_inference_steps` = 1"):
        run_demo(num_inference_steps=1)
    with pytest.raises(ValueError, match="`mode` = 'fast'"):
        resolve_config("wan2.1", "fast")
    assert resolve_config("wan2.1", "channel").mode == "channel"
    assert resolve_config("wan2.1").mode == "token"  # the bundled default: token mode, the fidelity plan


# -- the demo run ---------------------------------------------------------------------------------------------


def test_demo_exits_0_and_writes_its_files(demo_run):
    code, _, stderr, out_dir = demo_run
    assert code == 0, stderr
    assert (out_dir / "frames.png").stat().st_size > 1000
    videos = list(out_dir.glob("side_by_side.*"))
    assert len(videos) == 1 and videos[0].suffix in (".mp4", ".gif") and videos[0].stat().st_size > 1000
    from PIL import Image

    with Image.open(out_dir / "frames.png") as strip:
        width, height = strip.size
    assert width > 9 * 32 and height > 3 * 32  # 9 frames per row, three rows


def test_demo_table_has_every_row_and_matches_the_summary(demo_run):
    code, stdout, _, out_dir = demo_run
    assert code == 0
    for row in TABLE_ROWS:
        assert row in stdout, row
    assert "config wan2.1 (mode token)" in stdout and "4 steps" in stdout
    summary = json.loads((out_dir / "summary.json").read_text())
    savings = summary["attention_savings"]
    assert savings["kind"] == "counted" and summary["wall_time_s"]["kind"] == "measured"
    assert savings["num_reusing_steps"] == 2 and len(savings["step_savings"]) == 4
    assert savings["step_savings"][0] == 0 and savings["step_savings"][3] == 0 and savings["generation"] > 0
    line = next(line for line in stdout.splitlines() if line.startswith("attention savings, generation"))
    assert f"{savings['generation']:.1%}" in line
    line = next(line for line in stdout.splitlines() if line.startswith("attention savings, reusing steps"))
    assert f"{savings['reusing_steps']:.1%} (2 of 4 steps)" in line
    # reuse happened, so the video differs from dense (PSNR finite); 17.3 dB measured here at 4 steps.
    # Only a sanity bound: the quality floors live in test_quality_regression.py.
    assert summary["psnr_db"] is not None and summary["psnr_db"] > 10
    assert 0.3 < summary["ssim"] < 1.0
    assert "saves little or nothing in time" in stdout  # CPU + token mode (the bundled default): the honest note
    assert "share of query-key pairs skipped" in stdout


# -- files and table from a synthetic result (no generation) --------------------------------------------------


def fake_result(prompt="a red circle moving right quickly on a gray background"):
    from timeripple.demo.clips import make_clip

    frames, _ = make_clip(0, colour="red", shape="circle", direction="right")
    dense = (frames + 1) / 2  # (9, 3, 32, 32) in [0, 1]
    ripple = (dense + 0.01 * torch.randn_like(dense)).clamp(0, 1)
    stats = GenerationStats(num_steps=4, thresholds=[None, 0.4, 0.5, None], step_savings=[0.0, 0.8, 0.6, 0.0],
                            total_savings=0.35, qk_products=400, skipped_products=140.0, num_calls=40)
    from timeripple.eval import psnr, score_adherence, ssim

    return DemoResult(
        prompt=prompt, negative_prompt=None, seed=0, num_inference_steps=4, guidance_scale=5.0, device="cpu",
        config=resolve_config("wan2.1"), dense=dense, ripple=ripple, dense_seconds=2.0, ripple_seconds=4.0,
        stats=stats, psnr=psnr(dense, ripple), ssim=ssim(dense, ripple),
        adherence_dense=score_adherence(dense, prompt), adherence_ripple=score_adherence(ripple, prompt),
    )


@pytest.mark.parametrize("video_format", ["gif", "auto"])
def test_save_outputs_writes_a_readable_video(tmp_path, video_format):
    result = fake_result()
    files = save_outputs(result, tmp_path / "o", video_format=video_format, scale=4)
    assert set(files) == {"video", "frames", "summary"}
    import imageio.v3 as iio

    frames = iio.imread(files["video"])  # (F, H, W, 3)
    assert frames.shape[0] == 9 and frames.shape[2] >= 2 * 32 * 4
    # left pane = dense, right pane = TimeRipple, below a 24-pixel header
    pane = frames[4, 24:24 + 128, :128, :3].astype(float)
    dense = (result.dense[4].permute(1, 2, 0).numpy() * 255).repeat(4, 0).repeat(4, 1)
    assert np.abs(pane - dense).mean() < 12  # lossy codecs: close, not exact
    if video_format == "gif":
        assert files["video"].suffix == ".gif"


def test_save_outputs_rejects_bad_arguments(tmp_path):
    result = fake_result()
    with pytest.raises(ValueError, match="`video_format` = 'webm'"):
        save_outputs(result, tmp_path, video_format="webm")
    with pytest.raises(ValueError, match="`scale` = 0"):
        save_outputs(result, tmp_path, scale=0)


def test_format_report_figures():
    result = fake_result()
    text = format_report(result)
    assert "0.50x" in text  # 2 s dense / 4 s TimeRipple
    # generation total 35%; over the 2 reusing steps of 4 (equal product counts per step): 70%
    assert "35.0%" in text and "70.0% (2 of 4 steps)" in text
    assert math.isclose(result.savings_reusing_steps, 0.35 * 4 / 2)
    assert re.search(r"adherence: direction\s+yes \(right\)\s+yes \(right\)", text), text


def test_prompt_without_a_colour_is_not_scored():
    from timeripple.demo.run_demo import _score

    result = fake_result()
    assert _score(result.dense, "a circle moving right") is None
    result.adherence_dense = result.adherence_ripple = None
    assert re.search(r"adherence: shape\s+n/a\s+n/a", format_report(result))
