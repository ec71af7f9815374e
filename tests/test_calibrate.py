"""Threshold calibration (`timeripple.eval.calibration`, `timeripple calibrate`): the table on the shipped tiny model
(4 steps, guidance 1, one prompt: fast), scale 0 reproducing dense bit for bit, savings growing with the
scale, `best` on a hand-made table, the model restored after every run (also when one raises), input
errors, and the CLI (help, a tiny run into a tmp dir, bad arguments)."""

from __future__ import annotations

import contextlib
import io
import json
import math

import pytest
import torch

import timeripple
from timeripple.eval.calibration import CalibrationResult, CalibrationRow, calibrate, scale_config
from timeripple.cli import main
from timeripple.demo import load_tiny_pipeline, shipped_weights_dir
from timeripple.demo.loading import WEIGHTS_FILE
from timeripple.diffusers import HOOK_NAME

pytestmark = pytest.mark.skipif(
    not (shipped_weights_dir() / WEIGHTS_FILE).is_file(), reason="the shipped tiny-model weights are absent"
)

WAN = timeripple.load_config("wan2.1", mode="channel")  # calibration scales the paper's thresholds
PROMPT = "a red circle moving right quickly on a gray background"
STEPS = 4  # wan2.1 scaled to 4 steps: steps 1-2 reuse, 0 and 3 are dense
FAST = {"guidance_scale": 1.0}  # one transformer call per step


def processors(pipe):
    return dict(pipe.transformer.attn_processors)


def assert_untouched(pipe, before):
    after = processors(pipe)
    assert after.keys() == before.keys()
    changed = [name for name in before if after[name] is not before[name]]
    assert not changed, f"processors not restored: {changed[:3]}"
    registry = getattr(pipe.transformer, "_diffusers_hook", None)
    assert registry is None or registry.get_hook(HOOK_NAME) is None, "the TimeRipple hook is still registered"
    assert getattr(pipe.transformer, "_timeripple_handle", None) is None


@pytest.fixture(scope="module")
def pipe():
    return load_tiny_pipeline()


@pytest.fixture(scope="module")
def run(pipe):
    """One calibration (scales given unsorted) with the processors seen before it."""
    pipe.set_progress_bar_config(desc="mine")
    before = processors(pipe)
    result = calibrate(pipe, WAN, [PROMPT], scales=(1.0, 0.0, 0.25), num_inference_steps=STEPS,
                       pipe_kwargs=FAST, progress=False)
    return result, before


# -- on the tiny model ---------------------------------------------------------------------------------------


def test_table_shape_and_thresholds(run):
    result, _ = run
    wan = timeripple.load_config("wan2.1", mode="channel")
    assert result.scales == [0.0, 0.25, 1.0]
    assert result.runs == [(PROMPT, 0)] and result.num_inference_steps == STEPS
    for row in result.rows:
        assert len(row.savings) == len(row.psnr) == len(row.ssim) == len(row.identical) == 1
        assert row.threshold_start == pytest.approx(wan.threshold_start * row.scale)
        assert row.threshold_end == pytest.approx(wan.threshold_end * row.scale)


def test_scale_zero_reproduces_dense_bit_for_bit(run):
    row = run[0].row(0.0)
    assert row.identical == [True]
    assert math.isinf(row.psnr[0]) and row.ssim[0] == pytest.approx(1.0) and row.savings == [0.0]


def test_savings_grow_and_fidelity_falls_with_the_scale(run):
    result, _ = run
    savings = [row.mean_savings for row in result.rows]
    assert savings[0] < savings[1] < savings[2], savings
    small, large = result.row(0.25), result.row(1.0)
    assert large.identical == [False] and math.isfinite(large.psnr[0]), "scale 1 changed nothing: a silent no-op"
    assert small.mean_psnr >= large.mean_psnr, (small.psnr, large.psnr)


def test_processors_and_progress_bar_restored(run, pipe):
    assert_untouched(pipe, run[1])
    assert pipe._progress_bar_config == {"desc": "mine"}


def test_to_dict_summary_config_and_plot(run, tmp_path):
    result, _ = run
    data = json.loads(json.dumps(result.to_dict()))
    assert [r["scale"] for r in data["rows"]] == [0.0, 0.25, 1.0]
    assert data["rows"][0]["psnr_db"] == [None] and data["rows"][2]["psnr_db"][0] > 0
    assert data["config"]["name"] == "wan2.1" and data["chosen_scale"] is None
    text = result.summary()
    assert "0.1 → 0.15" in text and "inf" in text and f"{result.row(1.0).mean_savings:.1%}" in text
    config = result.config_for(0.25)
    assert (config.name, config.threshold_start, config.threshold_end) == ("wan2.1-x0.25", 0.1, 0.15)
    assert config.replace(name="wan2.1", threshold_start=0.4, threshold_end=0.6) == timeripple.load_config("wan2.1", mode="channel")
    with pytest.raises(ValueError, match="was not calibrated"):
        result.config_for(0.3)
    pytest.importorskip("matplotlib")
    path = result.plot(tmp_path / "sub" / "curve.png", highlight=0.25)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_model_restored_when_a_run_raises(pipe):
    before = processors(pipe)

    def fail_under_timeripple(pipe_, step, timestep, tensors):
        if getattr(pipe_.transformer, "_timeripple_handle", None) is not None:
            raise RuntimeError("boom in a TimeRipple run")
        return tensors

    with pytest.raises(RuntimeError, match="boom"):
        calibrate(pipe, WAN, [PROMPT], scales=(0.5,), num_inference_steps=2,
                  pipe_kwargs={**FAST, "callback_on_step_end": fail_under_timeripple}, progress=False)
    assert_untouched(pipe, before)


# -- bad input (raised before anything runs) -------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, match", [
    ({"prompts": []}, "non-empty list of strings"),
    ({"prompts": [3]}, "non-empty list of strings"),
    ({"scales": (0.5, -0.1)}, "finite number >= 0"),
    ({"scales": (float("nan"),)}, "finite number >= 0"),
    ({"scales": ()}, "at least one scale"),
    ({"scales": (0.5, 0.5)}, "repeated"),
    ({"seeds": (-1,)}, "ints >= 0"),
    ({"num_inference_steps": 1}, "int >= 2"),
    ({"target_psnr": 30.0, "target_savings": 0.5}, "at most one target"),
    ({"target_savings": 60}, "fraction <= 1"),
    ({"config": timeripple.load_config("wan2.1", mode="channel").replace(mode="token", budget=0.5)}, "budget mode"),
    ({"config": "wan2.1"}, "pair-savings target sets the savings directly.*with_mode\\('channel'\\)"),
])
def test_bad_input(pipe, kwargs, match):
    args = {"config": WAN, "prompts": [PROMPT], **kwargs}
    with pytest.raises(ValueError, match=match):
        calibrate(pipe, args.pop("config"), args.pop("prompts"), progress=False, **args)


def test_pipe_without_transformer_or_already_patched(pipe):
    with pytest.raises(TypeError, match="with a `transformer`"):
        calibrate(object(), WAN, [PROMPT])
    handle = timeripple.apply_timeripple(pipe, "wan2.1")
    try:
        with pytest.raises(ValueError, match="already has TimeRipple applied"):
            calibrate(pipe, WAN, [PROMPT])
    finally:
        handle.remove()


# -- best() on a hand-made table ----------------------------------------------------------------------------


def hand_made() -> CalibrationResult:
    base = timeripple.load_config("wan2.1", mode="channel")
    table = [(0.1, [0.40, 0.42], [41.0, 39.0]), (0.25, [0.60, 0.62], [32.0, 30.0]),
             (0.5, [0.70, 0.70], [27.0, 25.0]), (1.0, [0.75, 0.75], [23.0, 21.0])]
    rows = []
    for scale, savings, psnr in table:
        c = scale_config(base, scale)
        rows.append(CalibrationRow(scale, c.threshold_start, c.threshold_end, None, savings, psnr, [0.9, 0.9],
                                   [False, False]))
    return CalibrationResult(config=base, runs=[("a", 0), ("b", 0)], num_inference_steps=10, rows=rows)


@pytest.mark.parametrize("target, scale", [
    ({"target_psnr": 31.0}, 0.25), ({"target_psnr": 30.9}, 0.25), ({"target_psnr": 20.0}, 1.0),
    ({"target_psnr": 40.0}, 0.1), ({"target_savings": 0.65}, 0.5), ({"target_savings": 0.41}, 0.1),
    ({"target_savings": 0.75}, 1.0),
])
def test_best_picks(target, scale):
    assert hand_made().best(**target) == scale


@pytest.mark.parametrize("target, match", [
    ({}, "a target is needed"), ({"target_psnr": 30.0, "target_savings": 0.5}, "at most one target"),
    ({"target_psnr": 45.0}, "no calibrated scale reaches it"), ({"target_savings": 0.9}, "larger scales"),
    ({"target_savings": 60.0}, "write 60% as 0.6"), ({"target_psnr": -3.0}, "> 0"),
])
def test_best_errors(target, match):
    with pytest.raises(ValueError, match=match):
        hand_made().best(**target)


def test_mean_psnr_leaves_identical_runs_out():
    row = CalibrationRow(0.1, 0.04, 0.06, None, [0.3, 0.3], [math.inf, 30.0], [1.0, 0.9], [True, False])
    assert row.mean_psnr == 30.0 and row.min_psnr == 30.0
    row.psnr = [math.inf, math.inf]
    assert math.isinf(row.mean_psnr)


# -- the CLI ------------------------------------------------------------------------------------------------


def run_cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exit_:
            code = exit_.code
    return code, out.getvalue(), err.getvalue()


def test_cli_help():
    code, out, _ = run_cli("calibrate", "--help")
    assert code == 0
    for option in ("--config", "--scales", "--steps", "--seeds", "--prompt", "--target-psnr", "--target-savings",
                   "--output", "--device", "calibration.json", "calibrated_config.yaml"):
        assert option in out
    assert "calibrate" in run_cli("--help")[1]


def test_cli_tiny_run_writes_the_files(tmp_path):
    out_dir = tmp_path / "cal"
    code, out, err = run_cli("calibrate", "--prompt", PROMPT, "--scales", "1", "0", "--steps", "3",
                             "--guidance-scale", "1", "--target-savings", "0.01", "--output", str(out_dir),
                             "--no-progress")
    assert code == 0, err
    data = json.loads((out_dir / "calibration.json").read_text())
    assert [r["scale"] for r in data["rows"]] == [0.0, 1.0] and data["chosen_scale"] == 1.0
    assert data["settings"] == {"output_type": "pt", "guidance_scale": 1.0, "num_inference_steps": 3}
    assert data["rows"][0]["identical"] == [True] and data["rows"][1]["mean_savings"] >= 0.01
    config = timeripple.TimeRippleConfig.from_yaml(out_dir / "calibrated_config.yaml")
    assert config == timeripple.load_config("wan2.1", mode="channel").replace(name="wan2.1-x1")
    assert "Chosen for mean savings >= 1.0%: scale 1" in out and "θ (start → end)" in out
    if (out_dir / "calibration.png").exists():
        assert (out_dir / "calibration.png").stat().st_size > 0
    else:
        assert "no calibration.png" in err


@pytest.mark.parametrize("argv, match", [
    (("--target-psnr", "30", "--target-savings", "0.5"), "not allowed with"),
    (("--target-savings", "60"), "write 60% as 0.6"),
    (("--scales", "-1"), "must be >= 0"),
    (("--config", "no_such_config"), "no_such_config"),
])
def test_cli_bad_arguments(tmp_path, argv, match):
    code, out, err = run_cli("calibrate", "--output", str(tmp_path / "x"), *argv)
    assert code == 2 and match in err, err
    assert not (tmp_path / "x").exists()
