"""TimeRippleConfig: validation with useful messages, dict/YAML round trips, safe loading, bundled
configs and their mirror, attention keyword arguments."""

import dataclasses
import math
from pathlib import Path

import pytest
import yaml

import timeripple
from timeripple import TimeRippleConfig, list_configs, load_config

REPO = Path(__file__).resolve().parents[1]
PACKAGE_CONFIGS = REPO / "src" / "timeripple" / "configs"
MIRROR_CONFIGS = REPO / "configs"
BUNDLED = ["cogvideox", "hunyuan_video", "open_sora_plan", "wan2.1", "wan2.2"]
TABLE_1 = {  # name: (model_family, threshold_start, threshold_end, ramp_start_step, ramp_end_step)
    "hunyuan_video": ("hunyuan_video", 0.2, 0.5, 10, 20),
    "wan2.1": ("wan", 0.4, 0.6, 10, 48),
    "wan2.2": ("wan", 0.4, 0.6, 10, 48),
    "cogvideox": ("cogvideox", 0.2, 0.5, 10, 28),
    "open_sora_plan": ("open_sora_plan", 0.4, 0.8, 20, 48),
}


def test_public_names_reachable_from_package():
    assert timeripple.TimeRippleConfig is TimeRippleConfig
    assert timeripple.load_config is load_config
    assert timeripple.list_configs() == BUNDLED


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_values(name):
    cfg = load_config(name)
    family, start, end, ramp_start, ramp_end = TABLE_1[name]
    assert (cfg.name, cfg.model_family) == (name, family)
    assert (cfg.threshold_start, cfg.threshold_end) == (start, end)
    assert (cfg.ramp_start_step, cfg.ramp_end_step) == (ramp_start, ramp_end)
    assert cfg.reference_num_steps == 50 and cfg.window == 2
    assert cfg.axes == ("t", "y", "x") and cfg.priority == ("t", "y", "x")
    assert cfg.dense_last_step is True and cfg.version == 1 and cfg.fixed_threshold is None
    # the bundled default is the fast setting: token mode, the fidelity plan at 50% pair savings
    fast = dict(mode="token", pair_savings=0.5, key_share="auto", budget_scope="call", key_repr="mean",
                key_score="kv", query_repr="interp", token_keys="chain", budget=None, key_budget=None)
    assert {field: getattr(cfg, field) for field in fast} == fast


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_channel_mode_is_one_option_away(name):
    paper = load_config(name, mode="channel")
    fast = load_config(name)
    assert paper.mode == "channel" and paper.name == fast.name
    # the other mode's options are back at their defaults; the schedule is kept
    assert (paper.pair_savings, paper.key_share, paper.budget_scope, paper.key_repr, paper.query_repr,
            paper.key_score) == (None, 0.7, "head", "source", "copy", "delta")
    for field in ("threshold_start", "threshold_end", "ramp_start_step", "ramp_end_step", "window", "axes"):
        assert getattr(paper, field) == getattr(fast, field)
    assert paper.with_mode("token") == TimeRippleConfig(**{**paper.to_dict(), "mode": "token"})
    assert fast.with_mode("token") is fast
    assert load_config(fast, mode="channel") == paper
    assert fast.replace(mode="channel") == paper  # a new mode starts from with_mode
    assert fast.replace(budget=0.4).pair_savings is None  # alternatives replace each other
    assert fast.replace(budget=0.4).replace(pair_savings=0.6).budget is None
    with pytest.raises(ValueError, match="replaces budget and key_budget"):
        fast.replace(budget=0.4, pair_savings=0.6)
    with pytest.raises(ValueError, match="`mode` = 'paper'.*channel"):
        load_config(name, mode="paper")
    with pytest.raises(ValueError, match="`mode` = 'fast'"):
        fast.with_mode("fast")


def test_bundled_files_mirrored_identically():
    assert MIRROR_CONFIGS.is_symlink(), "configs/ is a link to the package's configs, not a second copy"
    package = sorted(p.name for p in PACKAGE_CONFIGS.glob("*.yaml"))
    assert package == [f"{name}.yaml" for name in BUNDLED]
    assert sorted(p.name for p in MIRROR_CONFIGS.glob("*.yaml")) == package
    for file_name in package:
        assert (PACKAGE_CONFIGS / file_name).read_bytes() == (MIRROR_CONFIGS / file_name).read_bytes(), file_name


@pytest.mark.parametrize("name", BUNDLED)
def test_every_yaml_field_commented(name):
    lines = (PACKAGE_CONFIGS / f"{name}.yaml").read_text().splitlines()
    keys = [line.split(":")[0] for line in lines if line and not line.startswith("#")]
    assert keys == [f.name for f in dataclasses.fields(TimeRippleConfig)]
    for i, line in enumerate(lines):
        if line and not line.startswith("#"):
            assert lines[i - 1].startswith("# "), f"{name}: `{line}` has no comment above it"


def test_wan22_says_values_are_carried_over():
    text = (PACKAGE_CONFIGS / "wan2.2.yaml").read_text()
    assert "carried over unchanged from Wan2.1" in text


@pytest.mark.parametrize("alias", ["wan2.1", "WAN2.1", "Hunyuan-Video", "hunyuan_video", "open-sora-plan", " CogVideoX "])
def test_name_aliases(alias):
    assert load_config(alias).name == alias.strip().lower().replace("-", "_")


def test_unknown_bundled_name_lists_names():
    with pytest.raises(ValueError) as info:
        load_config("wan2.3")
    message = str(info.value)
    assert "`name_or_path` = 'wan2.3'" in message
    for name in BUNDLED:
        assert name in message
    assert "did you mean" in message


def test_load_from_path_and_missing_path(tmp_path):
    path = tmp_path / "mine.yaml"
    cfg = TimeRippleConfig(name="mine", threshold_start=0.1, threshold_end=0.3)
    cfg.to_yaml(path)
    assert load_config(path) == cfg
    assert load_config(str(path)) == cfg
    assert load_config(cfg) is cfg
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(TypeError, match="`name_or_path`"):
        load_config(3)


@pytest.mark.parametrize("mode_options", [
    dict(mode="token", token_criterion="fraction", token_fraction=0.75, budget=0.5),
    dict(mode="channel", channel_alpha=1.5),
])
def test_yaml_round_trip_with_every_option(tmp_path, mode_options):
    cfg = TimeRippleConfig(
        name="custom: with colon", model_family="ltx", threshold_start=0.0, threshold_end=1e-5,
        ramp_start_step=0, ramp_end_step=3, reference_num_steps=4, fixed_threshold=0.25, dense_last_step=False,
        window=3, axes=("x", "t"), priority=("x", "y", "t"), axis_threshold_scale={"t": 2, "x": 0.5},
        **mode_options,
    )
    text = cfg.to_yaml(tmp_path / "c.yaml")
    assert (tmp_path / "c.yaml").read_text() == text
    back = TimeRippleConfig.from_yaml(tmp_path / "c.yaml")
    assert back == cfg
    assert back.threshold_end == 1e-5 and isinstance(back.threshold_end, float)
    assert back.axis_threshold_scale == {"t": 2.0, "x": 0.5}
    assert TimeRippleConfig.from_dict(cfg.to_dict()) == cfg
    assert yaml.safe_load(text) == cfg.to_dict()


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_round_trip(name, tmp_path):
    cfg = load_config(name)
    cfg.to_yaml(tmp_path / "x.yaml")
    assert TimeRippleConfig.from_yaml(tmp_path / "x.yaml") == cfg
    # the bundled file is exactly what to_yaml writes below its header
    bundled = (PACKAGE_CONFIGS / f"{name}.yaml").read_text()
    assert bundled.endswith(cfg.to_yaml())


def test_inputs_are_not_mutated_and_sequences_become_tuples():
    axes, scale = ["t", "y"], {"t": 1.0, "y": 0.5}
    data = {"axes": axes, "axis_threshold_scale": scale}
    cfg = TimeRippleConfig.from_dict(data)
    assert cfg.axes == ("t", "y") and isinstance(cfg.priority, tuple)
    scale["t"] = 9.0
    axes.append("x")
    assert cfg.axis_threshold_scale == {"t": 1.0, "y": 0.5} and cfg.axes == ("t", "y")
    assert data == {"axes": ["t", "y", "x"], "axis_threshold_scale": {"t": 9.0, "y": 0.5}}
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.window = 3
    assert hash(cfg) == hash(TimeRippleConfig.from_dict(cfg.to_dict()))


def test_replace_validates():
    cfg = load_config("wan2.1", mode="channel")
    token = cfg.replace(mode="token", budget=0.5)
    assert (token.mode, token.budget, cfg.mode, cfg.budget) == ("token", 0.5, "channel", None)
    with pytest.raises(ValueError, match="`window` = 1"):
        cfg.replace(window=1)
    with pytest.raises(ValueError, match="did you mean 'window'"):
        cfg.replace(windw=3)


def test_default_repr_is_dataclass_repr():
    assert repr(TimeRippleConfig()).startswith("TimeRippleConfig(version=1, name=None")


def test_attention_kwargs():
    cfg = load_config("hunyuan_video", mode="channel")
    assert cfg.attention_kwargs(5, 50) is None
    assert cfg.attention_kwargs(49, 50) is None
    kwargs = cfg.attention_kwargs(15, 50)
    assert kwargs == {
        "threshold": pytest.approx(0.35), "mode": "channel", "window": 2, "axes": ("t", "y", "x"),
        "priority": ("t", "y", "x"), "channel_alpha": None, "token_criterion": "strict",
        "token_fraction": 0.9, "budget": None, "token_keys": "chain", "key_budget": None, "key_repr": "source",
        "query_repr": "copy", "key_score": "delta", "pair_savings": None, "key_share": 0.7,
        "budget_scope": "head", "cuda_graph": False,
    }
    fast = load_config("hunyuan_video").attention_kwargs(15, 50)
    assert {k: fast[k] for k in ("mode", "pair_savings", "key_share", "budget_scope")} == {
        "mode": "token", "pair_savings": 0.5, "key_share": "auto", "budget_scope": "call"}
    scaled = cfg.replace(axes=("t", "x"), axis_threshold_scale={"t": 2.0}).attention_kwargs(20, 50)
    assert scaled["threshold"] == {"t": 1.0, "x": 0.5}


# -- bad input -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes, exc, fragments",
    [
        ({"ramp_start_step": 30, "ramp_end_step": 20}, ValueError, ["`ramp_start_step` = 30", "ramp_end_step = 20"]),
        ({"ramp_end_step": 50}, ValueError, ["`ramp_end_step` = 50", "reference_num_steps = 50"]),
        ({"ramp_start_step": -1}, ValueError, ["`ramp_start_step` = -1"]),
        ({"threshold_start": -0.1}, ValueError, ["`threshold_start` = -0.1", ">= 0"]),
        ({"threshold_end": math.nan}, ValueError, ["`threshold_end` = nan", "finite"]),
        ({"threshold_end": math.inf}, ValueError, ["`threshold_end` = inf"]),
        ({"fixed_threshold": -1.0}, ValueError, ["`fixed_threshold` = -1.0"]),
        ({"window": 1}, ValueError, ["`window` = 1", ">= 2"]),
        ({"window": 2.0}, TypeError, ["`window` must be an int", "float"]),
        ({"axes": ("t", "z")}, ValueError, ["`axes` = ('t', 'z')", "'z'"]),
        ({"axes": ("t", "t")}, ValueError, ["`axes`", "repeat"]),
        ({"axes": ()}, ValueError, ["`axes` = ()"]),
        ({"axes": "tyx"}, TypeError, ["`axes`", "'tyx'"]),
        ({"priority": ("t", "y")}, ValueError, ["`priority` = ('t', 'y')", "permutation"]),
        ({"budget": 0.5}, ValueError, ["`budget` = 0.5", "mode='token'", "mode: token"]),
        ({"mode": "token", "budget": 1.5}, ValueError, ["`budget` = 1.5"]),
        ({"mode": "tokens"}, ValueError, ["`mode` = 'tokens'", "channel"]),
        ({"token_criterion": "max"}, ValueError, ["`token_criterion` = 'max'"]),
        ({"token_fraction": 0.0}, ValueError, ["`token_fraction` = 0.0"]),
        ({"channel_alpha": 0}, ValueError, ["`channel_alpha` = 0.0"]),
        ({"axis_threshold_scale": {"t": -1.0}}, ValueError, ["`axis_threshold_scale['t']` = -1.0"]),
        ({"axis_threshold_scale": {"z": 1.0}}, ValueError, ["`axis_threshold_scale`", "'z'"]),
        ({"axis_threshold_scale": [1.0]}, TypeError, ["`axis_threshold_scale`"]),
        ({"version": 2}, ValueError, ["`version` = 2"]),
        ({"threshold_start": "0.2"}, TypeError, ["`threshold_start` must be a float", "'0.2'"]),
        ({"threshold_start": True}, TypeError, ["`threshold_start`"]),
        ({"dense_last_step": "yes"}, TypeError, ["`dense_last_step`", "'yes'"]),
        ({"name": 3}, TypeError, ["`name`"]),
    ],
)
def test_bad_values(changes, exc, fragments):
    with pytest.raises(exc) as info:
        TimeRippleConfig.from_dict(changes)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    assert "Fix:" in message


def test_unknown_key_suggests_close_match():
    with pytest.raises(ValueError) as info:
        TimeRippleConfig.from_dict({"treshold_start": 0.3})
    message = str(info.value)
    assert "'treshold_start'" in message and "did you mean 'threshold_start'" in message
    assert "ramp_end_step" in message  # the valid keys are listed


def test_unknown_yaml_key_and_wrong_type_from_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("version: 1\nramp_strat_step: 3\n")
    with pytest.raises(ValueError, match="did you mean 'ramp_start_step'"):
        TimeRippleConfig.from_yaml(path)
    path.write_text("version: 1\nwindow: two\n")
    with pytest.raises(TypeError, match="`window` must be an int"):
        TimeRippleConfig.from_yaml(path)
    path.write_text("- 1\n- 2\n")
    with pytest.raises(TypeError, match="mapping"):
        TimeRippleConfig.from_yaml(path)


def test_python_tags_refused(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("version: 1\nname: !!python/object/apply:os.getcwd []\n")
    with pytest.raises(ValueError, match="safe_load"):
        TimeRippleConfig.from_yaml(path)
    path.write_text("!!python/object:timeripple.config.TimeRippleConfig {window: 2}\n")
    with pytest.raises(ValueError, match="safe_load"):
        load_config(path)


def test_channel_alpha_needs_channel_mode():
    with pytest.raises(ValueError, match="channel_alpha.*mode='channel'"):
        TimeRippleConfig(mode="token", channel_alpha=1.5)
    assert TimeRippleConfig(mode="channel", channel_alpha=1.5).channel_alpha == 1.5
