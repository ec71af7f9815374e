"""Config files and values at the edge (issue 12): YAML 1.2 floats, duplicate keys, unreadable files, a
file that shares a bundled config's name, a per-axis scale that must stay as validated."""

import copy
import os
import pickle

import pytest

from timeripple import TimeRippleConfig, load_config


def test_exponent_floats_are_floats(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("version: 1\nthreshold_start: 5e-2\nthreshold_end: 1E3\nfixed_threshold: 2.5e+1\n")
    cfg = TimeRippleConfig.from_yaml(path)
    assert (cfg.threshold_start, cfg.threshold_end, cfg.fixed_threshold) == (0.05, 1000.0, 25.0)


def test_duplicate_key_is_refused(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("version: 1\nwindow: 2\nwindow: 3\n")
    with pytest.raises(ValueError, match="'window' appears twice"):
        TimeRippleConfig.from_yaml(path)


def test_unreadable_files_get_the_usual_message(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"`path` = .*no such config file.*Fix:"):
        TimeRippleConfig.from_yaml(tmp_path / "missing.yaml")
    with pytest.raises(IsADirectoryError, match=r"it is a folder.*Fix:"):
        TimeRippleConfig.from_yaml(tmp_path)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"not UTF-8.*Fix:"):
        TimeRippleConfig.from_yaml(latin)
    huge = tmp_path / "huge.yaml"
    huge.write_text("window: " + "9" * 5000 + "\n")
    with pytest.raises(ValueError, match=r"cannot be read.*Fix:"):
        TimeRippleConfig.from_yaml(huge)


def test_a_file_named_like_a_bundled_config_does_not_shadow_it(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    TimeRippleConfig(name="mine", window=3).to_yaml("wan2.1")
    bundled = load_config("wan2.1")
    assert bundled.name == "wan2.1" and bundled.window == 2
    assert any("./wan2.1" in r.getMessage() for r in caplog.records)
    assert load_config(os.path.join(".", "wan2.1")).name == "mine"  # explicit path: the file


def test_axis_threshold_scale_cannot_change_after_validation():
    cfg = TimeRippleConfig(axis_threshold_scale={"t": 1.0, "y": 0.5})
    with pytest.raises(TypeError, match="read-only"):
        cfg.axis_threshold_scale["t"] = -5.0
    with pytest.raises(TypeError, match="read-only"):
        cfg.axis_threshold_scale.update(x=0.0)
    assert cfg.axis_threshold_scale == {"t": 1.0, "y": 0.5}
    for clone in (pickle.loads(pickle.dumps(cfg)), copy.deepcopy(cfg), cfg.replace()):
        assert clone == cfg and hash(clone) == hash(cfg)
    assert type(cfg.to_dict()["axis_threshold_scale"]) is dict  # plain for YAML / JSON
