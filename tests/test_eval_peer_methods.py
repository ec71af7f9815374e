"""The peers and the paper's ablations in the eval registry, run the way the harness runs them."""

import os
import sys

import pytest
import torch

import timeripple
from timeripple.diffusers import apply_timeripple
from timeripple.eval import get_method, list_methods
from timeripple.eval.ablation_methods import ABLATION_METHODS
from timeripple.eval.peer_methods import PEER_METHODS, MethodUnavailable

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "examples"))
import _common  # noqa: E402

STEPS = 5
CONFIG = timeripple.TimeRippleConfig(
    model_family="wan", threshold_start=0.5, threshold_end=1.0, ramp_start_step=1, ramp_end_step=3,
    reference_num_steps=STEPS,
)
KNOBS = {"svg": 0.8, "minference": 0.5, "tr-svg": 1.0, "pab": 2.0, "fbc": 0.3, "magcache": 0.5, "taylorseer": 2.0,
         "delta-dit": 0.5, "tr+pab": 1.0, "tr+fbc": 1.0, "channel-fixed": 1.0, "channel-temporal": 1.0, "channel-w3": 1.0,
         "channel-w4": 1.0, "channel-w8": 1.0, "channel-alpha": 2.0}


@pytest.fixture(scope="module")
def wan():
    pipe, inputs = _common.tiny_wan()
    pipe.set_progress_bar_config(disable=True)
    return pipe, inputs, generate(pipe, inputs)


def generate(pipe, inputs):
    return pipe(**inputs, num_inference_steps=STEPS, output_type="latent",
                generator=torch.Generator().manual_seed(0)).frames


def test_every_peer_and_ablation_is_registered():
    assert set(PEER_METHODS + ABLATION_METHODS) <= set(list_methods())
    assert set(KNOBS) == set(PEER_METHODS + ABLATION_METHODS)


@pytest.mark.parametrize("name", PEER_METHODS + ABLATION_METHODS)
def test_method_runs_counts_and_undoes(wan, name):
    pipe, inputs, stock = wan
    processors = dict(pipe.transformer.attn_processors)
    method = get_method(name)
    if name == "magcache":  # this pipeline takes no prompt (no text encoder): calibrate on its own call
        from timeripple.eval import peer_methods
        from timeripple.peers import calibrate_mag_ratios

        peer_methods.MAG_RATIOS.setdefault(pipe, {})[STEPS] = calibrate_mag_ratios(pipe, lambda: generate(pipe, inputs))
    if method.install is not None:
        handle = method.install(pipe, KNOBS[name], CONFIG)
    else:
        setup = method.setup(KNOBS[name], CONFIG)
        handle = apply_timeripple(pipe, setup.config, attention_fn=setup.attention)
    try:
        out = generate(pipe, inputs)
        stats = handle.stats
    finally:
        handle.remove()
    reusing = [s for s, th in zip(stats.step_savings, stats.thresholds) if th is not None]
    assert stats.num_steps == STEPS and reusing and max(reusing) > 0, (name, stats)
    assert not torch.equal(out, stock), name
    assert all(pipe.transformer.attn_processors[k] is v for k, v in processors.items())
    assert not pipe.transformer.is_cache_enabled
    assert torch.equal(generate(pipe, inputs), stock)


def test_a_peer_that_cannot_run_says_why(wan):
    pipe, _, _ = wan

    class NoTimestep:  # a pipeline-like object without `current_timestep`
        transformer = pipe.transformer
        scheduler = pipe.scheduler

    with pytest.raises(MethodUnavailable, match="current_timestep"):
        get_method("pab").install(NoTimestep(), 2.0, CONFIG)

    class NotAVideoDiT:
        transformer = torch.nn.Linear(2, 2)

    with pytest.raises(MethodUnavailable, match="family"):
        get_method("fbc").install(NotAVideoDiT(), 0.1, CONFIG)
    from timeripple.eval import peer_methods

    peer_methods.MAG_RATIOS.pop(pipe, None)
    generate_once = generate(pipe, {**wan[1]})  # the scheduler knows the step count
    assert generate_once is not None
    with pytest.raises(MethodUnavailable, match="could not calibrate"):  # no text encoder: no prompt
        get_method("magcache").install(pipe, 0.1, CONFIG)
    assert not pipe.transformer.is_cache_enabled
