"""The step threshold schedule: hand-computed values for every bundled config, step-count scaling,
the fixed-threshold variant, edge cases and bad steps."""

import pytest

import timeripple
from timeripple import TimeRippleConfig, load_config
from timeripple.config import threshold_at
from timeripple.schedule import ramp_steps, scale_step

# (config, num_steps, step, expected θ or None), all computed by hand:
# ramp value = start + (end - start) * (step - s) / (e - s), s/e the (scaled) ramp steps.
CASES = [
    # hunyuan_video: 0.2 -> 0.5 over steps 10 -> 20 of 50
    ("hunyuan_video", 50, 0, None),
    ("hunyuan_video", 50, 9, None),
    ("hunyuan_video", 50, 10, 0.2),
    ("hunyuan_video", 50, 15, 0.35),  # 0.2 + 0.3 * 5/10
    ("hunyuan_video", 50, 20, 0.5),
    ("hunyuan_video", 50, 30, 0.5),
    ("hunyuan_video", 50, 48, 0.5),
    ("hunyuan_video", 50, 49, None),  # last step dense
    # 25 steps: s = floor(10*25/50 + .5) = floor(5.5) = 5, e = floor(20*25/50 + .5) = floor(10.5) = 10
    ("hunyuan_video", 25, 4, None),
    ("hunyuan_video", 25, 5, 0.2),
    ("hunyuan_video", 25, 7, 0.32),  # 0.2 + 0.3 * 2/5
    ("hunyuan_video", 25, 10, 0.5),
    ("hunyuan_video", 25, 23, 0.5),
    ("hunyuan_video", 25, 24, None),
    # 30 steps: s = floor(10*30/50 + .5) = floor(6.5) = 6, e = floor(20*30/50 + .5) = floor(12.5) = 12
    ("hunyuan_video", 30, 5, None),
    ("hunyuan_video", 30, 6, 0.2),
    ("hunyuan_video", 30, 9, 0.35),  # 0.2 + 0.3 * 3/6
    ("hunyuan_video", 30, 12, 0.5),
    ("hunyuan_video", 30, 29, None),
    # wan2.1: 0.4 -> 0.6 over steps 10 -> 48 of 50
    ("wan2.1", 50, 9, None),
    ("wan2.1", 50, 10, 0.4),
    ("wan2.1", 50, 29, 0.5),  # 0.4 + 0.2 * 19/38
    ("wan2.1", 50, 48, 0.6),
    ("wan2.1", 50, 49, None),
    # 25 steps: s = 5, e = floor(48*25/50 + .5) = floor(24.5) = 24 = the dense last step,
    # so the ramp is cut there: step 23 = 0.4 + 0.2 * 18/19
    ("wan2.1", 25, 4, None),
    ("wan2.1", 25, 14, 0.4 + 0.2 * 9 / 19),
    ("wan2.1", 25, 23, 0.4 + 0.2 * 18 / 19),
    ("wan2.1", 25, 24, None),
    # 30 steps: s = 6, e = floor(48*30/50 + .5) = floor(29.3) = 29 (the last step)
    ("wan2.1", 30, 6, 0.4),
    ("wan2.1", 30, 17, 0.5 - 0.2 / 46),  # 0.4 + 0.2 * 11/23
    # wan2.2 carries wan2.1's values
    ("wan2.2", 50, 29, 0.5),
    ("wan2.2", 50, 48, 0.6),
    ("wan2.2", 50, 49, None),
    # cogvideox: 0.2 -> 0.5 over steps 10 -> 28 of 50
    ("cogvideox", 50, 9, None),
    ("cogvideox", 50, 19, 0.35),  # 0.2 + 0.3 * 9/18
    ("cogvideox", 50, 28, 0.5),
    ("cogvideox", 50, 40, 0.5),
    ("cogvideox", 50, 49, None),
    # 30 steps: s = 6, e = floor(28*30/50 + .5) = floor(17.3) = 17
    ("cogvideox", 30, 17, 0.5),
    ("cogvideox", 30, 8, 0.2 + 0.3 * 2 / 11),
    # open_sora_plan: 0.4 -> 0.8 over steps 20 -> 48 of 50
    ("open_sora_plan", 50, 19, None),
    ("open_sora_plan", 50, 20, 0.4),
    ("open_sora_plan", 50, 34, 0.6),  # 0.4 + 0.4 * 14/28
    ("open_sora_plan", 50, 48, 0.8),
    ("open_sora_plan", 50, 49, None),
    # 25 steps: s = floor(20*25/50 + .5) = 10, e = 24: step 17 = 0.4 + 0.4 * 7/14
    ("open_sora_plan", 25, 9, None),
    ("open_sora_plan", 25, 17, 0.6),
]


@pytest.mark.parametrize("name, num_steps, step, expected", CASES)
def test_bundled_schedule_values(name, num_steps, step, expected):
    cfg = load_config(name)
    got = cfg.threshold_at(step, num_steps)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected, abs=1e-12)
    # the module function, the exported function and the method agree; names are accepted too
    assert threshold_at(cfg, step, num_steps) == got
    assert timeripple.threshold_at(name, step, num_steps) == got


@pytest.mark.parametrize("name", ["hunyuan_video", "wan2.1", "wan2.2", "cogvideox", "open_sora_plan"])
def test_reference_schedule_shape(name):
    cfg = load_config(name)
    values = [cfg.threshold_at(i, 50) for i in range(50)]
    dense = [i for i, v in enumerate(values) if v is None]
    assert dense == list(range(cfg.ramp_start_step)) + [49]
    ramp = values[cfg.ramp_start_step : 49]
    assert all(b >= a for a, b in zip(ramp, ramp[1:])), "the ramp never decreases"
    assert ramp[0] == cfg.threshold_start
    assert values[cfg.ramp_end_step] == pytest.approx(cfg.threshold_end)


def test_scale_step_rounds_half_up_exactly():
    assert scale_step(10, 25, 50) == 5  # 5.0
    assert scale_step(11, 25, 50) == 6  # 5.5 -> 6 (Python's round() gives 6 here too)
    assert scale_step(5, 25, 50) == 3  # 2.5 -> 3, where round() would give 2
    assert scale_step(48, 25, 50) == 24  # 24.0
    assert scale_step(10, 30, 50) == 6  # 6.0
    assert scale_step(1, 50, 50) == 1
    assert ramp_steps(load_config("hunyuan_video"), 25) == (5, 10)
    assert ramp_steps(load_config("cogvideox"), 30) == (6, 17)


def test_same_step_count_is_identity():
    for s in range(50):
        assert scale_step(s, 50, 50) == s


def test_single_step_run_is_dense():
    for name in timeripple.list_configs():
        assert load_config(name).threshold_at(0, 1) is None


def test_single_step_without_dense_last_step():
    cfg = TimeRippleConfig(ramp_start_step=10, ramp_end_step=20, dense_last_step=False)
    # s = floor(10/50 + .5) = 0, e = floor(20/50 + .5) = 0: step jump at step 0
    assert cfg.threshold_at(0, 1) == 0.5


def test_dense_last_step_off_keeps_last_step_on_the_schedule():
    cfg = load_config("hunyuan_video").replace(dense_last_step=False)
    assert cfg.threshold_at(49, 50) == 0.5
    assert cfg.threshold_at(9, 50) is None


def test_ramp_start_equals_end_is_a_step_jump():
    cfg = TimeRippleConfig(threshold_start=0.1, threshold_end=0.7, ramp_start_step=12, ramp_end_step=12)
    assert cfg.threshold_at(11, 50) is None
    assert cfg.threshold_at(12, 50) == 0.7
    assert cfg.threshold_at(30, 50) == 0.7
    assert cfg.threshold_at(49, 50) is None


def test_zero_ramp_start_has_no_dense_first_steps():
    cfg = TimeRippleConfig(threshold_start=0.0, threshold_end=0.4, ramp_start_step=0, ramp_end_step=4)
    assert cfg.threshold_at(0, 50) == 0.0
    assert cfg.threshold_at(2, 50) == pytest.approx(0.2)


def test_fixed_threshold_keeps_dense_steps():
    cfg = load_config("hunyuan_video").replace(fixed_threshold=0.3)
    values = [cfg.threshold_at(i, 50) for i in range(50)]
    assert values[:10] == [None] * 10
    assert values[10:49] == [0.3] * 39
    assert values[49] is None
    # scaled the same way at 25 steps: steps 0..4 dense, 5..23 fixed, 24 dense
    assert [cfg.threshold_at(i, 25) for i in (4, 5, 23, 24)] == [None, 0.3, 0.3, None]


def test_other_reference_num_steps():
    cfg = TimeRippleConfig(ramp_start_step=3, ramp_end_step=7, reference_num_steps=10)
    # 20 steps: s = 6, e = 14
    assert cfg.threshold_at(5, 20) is None
    assert cfg.threshold_at(6, 20) == 0.2
    assert cfg.threshold_at(10, 20) == pytest.approx(0.35)  # 0.2 + 0.3 * 4/8
    assert cfg.threshold_at(14, 20) == 0.5


@pytest.mark.parametrize(
    "step, num_steps, exc, word",
    [
        (50, 50, ValueError, "`step` = 50"),
        (-1, 50, ValueError, "`step` = -1"),
        (1.0, 50, TypeError, "`step` must be an int"),
        (True, 50, TypeError, "`step` must be an int"),
        (0, 0, ValueError, "`num_steps` = 0"),
        (0, 50.0, TypeError, "`num_steps` must be an int"),
    ],
)
def test_bad_steps(step, num_steps, exc, word):
    with pytest.raises(exc) as info:
        load_config("wan2.1").threshold_at(step, num_steps)
    assert word in str(info.value)
    assert "Fix:" in str(info.value)


def test_bad_config_argument():
    with pytest.raises(TypeError, match="`config`"):
        threshold_at({"threshold_start": 0.2}, 0, 50)
    with pytest.raises(ValueError, match="not a bundled config"):
        threshold_at("wan3", 0, 50)
