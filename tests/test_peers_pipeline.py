"""Peers on a tiny random Wan pipeline: attention peers, Δ-DiT, diffusers' caches, TimeRipple + a cache."""

import os
import sys

import pytest
import torch

import timeripple
from timeripple.peers import (
    PeerSchedule,
    apply_delta_dit,
    apply_minference,
    apply_ripple_svg,
    apply_svg,
    apply_timeripple_with_cache,
    calibrate_mag_ratios,
    enable_diffusers_cache,
    install_attention_peer,
    svg_attention,
)

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "examples"))
import _common  # noqa: E402

STEPS = 6
CONFIG = timeripple.TimeRippleConfig(
    model_family="wan", threshold_start=1.0, threshold_end=2.0, ramp_start_step=1, ramp_end_step=2,
    reference_num_steps=STEPS,
)


@pytest.fixture(scope="module")
def wan():
    pipe, inputs = _common.tiny_wan()
    pipe.set_progress_bar_config(disable=True)
    return pipe, inputs, generate(pipe, inputs)


def generate(pipe, inputs, steps=STEPS):
    return pipe(**inputs, num_inference_steps=steps, output_type="latent",
                generator=torch.Generator().manual_seed(0)).frames


def _assert_stock(pipe, inputs, stock, processors):
    assert all(pipe.transformer.attn_processors[k] is v for k, v in processors.items())
    assert not getattr(pipe.transformer, "is_cache_enabled", False)
    assert "forward" not in vars(pipe.transformer)
    assert torch.equal(generate(pipe, inputs), stock)


def test_attention_peers_run_count_and_remove(wan):
    pipe, inputs, stock = wan
    processors = dict(pipe.transformer.attn_processors)
    installers = {
        "svg": (lambda: apply_svg(pipe, 0.8, num_sampled=2), [0]),  # the first 24% of 6 steps: step 0
        "minference": (lambda: apply_minference(pipe, 0.5, pattern="a_shape"), []),
        "ripple_svg": (lambda: apply_ripple_svg(pipe, CONFIG, 0.8, num_sampled=2), [0, 5]),  # CONFIG's dense steps
    }
    for name, (install, dense_steps) in installers.items():
        handle = install()
        try:
            out = generate(pipe, inputs)
            stats = handle.stats
        finally:
            handle.remove()
        assert not torch.equal(out, stock), name
        assert stats.num_steps == STEPS and stats.total_savings > 0, name
        assert [i for i, th in enumerate(stats.thresholds) if th is None] == dense_steps, name
        assert all(stats.step_savings[i] == 0 for i in dense_steps), name
        _assert_stock(pipe, inputs, stock, processors)


def test_attention_peer_on_dense_steps_only_is_stock_and_refuses_a_second_install(wan):
    pipe, inputs, stock = wan
    handle = install_attention_peer(pipe, svg_attention, PeerSchedule(kwargs={"sparsity": 0.5}, dense_fraction=1.0))
    try:
        assert torch.equal(generate(pipe, inputs), stock)
        assert handle.stats.total_savings == 0
        with pytest.raises(ValueError, match="already has a peer"):
            apply_svg(pipe, 0.5)
        with pytest.raises(ValueError, match="sparsity"):
            handle.remove()
            apply_svg(pipe, 1.5)
    finally:
        handle.remove()
    tr = timeripple.apply_timeripple(pipe, CONFIG)
    try:
        with pytest.raises(ValueError, match="already has TimeRipple"):
            apply_svg(pipe, 0.5)
    finally:
        tr.remove()
    _assert_stock(pipe, inputs, stock, dict(pipe.transformer.attn_processors))


def test_delta_dit_skips_the_planned_blocks(wan):
    pipe, inputs, stock = wan
    processors = dict(pipe.transformer.attn_processors)
    handle = apply_delta_dit(pipe, num_blocks=1, interval=2, cutoff=0.5)
    try:
        out = generate(pipe, inputs)
        # 6 steps x 2 streams x 2 blocks; steps 1, 3, 5 skip one block per stream
        assert (handle.counts.computed, handle.counts.skipped) == (18, 6)
        assert handle.block_savings == pytest.approx(0.25) and handle.attention_savings == pytest.approx(0.25)
        assert handle.stats.step_savings == pytest.approx([0, 0.5, 0, 0.5, 0, 0.5])
        generate(pipe, inputs)
        assert handle.counts.skipped == 6  # counts restart with every generation
    finally:
        handle.remove()
    assert not torch.equal(out, stock)
    _assert_stock(pipe, inputs, stock, processors)
    never = apply_delta_dit(pipe, num_blocks=1, interval=1)
    try:
        assert torch.equal(generate(pipe, inputs), stock) and never.block_savings == 0
    finally:
        never.remove()
    with pytest.raises(ValueError, match="num_blocks"):
        apply_delta_dit(pipe, num_blocks=2)


@pytest.mark.parametrize("kind, knob", [("pab", 2), ("fbc", 0.2), ("magcache", 0.5), ("taylorseer", 2)])
def test_diffusers_caches_count_savings_and_remove(wan, kind, knob):
    pipe, inputs, stock = wan
    processors = dict(pipe.transformer.attn_processors)
    extra = {}
    if kind == "magcache":
        ratios = calibrate_mag_ratios(pipe, lambda: generate(pipe, inputs))
        assert len(ratios) == STEPS and ratios[0] == 1.0
        extra = dict(num_inference_steps=STEPS, mag_ratios=ratios)
    handle = enable_diffusers_cache(pipe, kind, knob, **extra)
    try:
        out = generate(pipe, inputs)
        stats = handle.stats
    finally:
        handle.remove()
    assert 0 < handle.attention_savings < 1 and stats.total_savings == handle.attention_savings
    assert stats.step_savings[0] == 0  # nothing is cached before the first step
    assert not torch.equal(out, stock)
    _assert_stock(pipe, inputs, stock, processors)


def test_cache_knob_errors_name_the_rule(wan):
    pipe, _, _ = wan
    with pytest.raises(ValueError, match="int >= 2"):
        enable_diffusers_cache(pipe, "pab", 1)
    with pytest.raises(ValueError, match="must be one of"):
        enable_diffusers_cache(pipe, "teacache", 0.1)
    with pytest.raises(ValueError, match="mag_ratios"):
        enable_diffusers_cache(pipe, "magcache", 0.1)
    assert not pipe.transformer.is_cache_enabled


@pytest.mark.parametrize("kind, knob", [("pab", 2), ("fbc", 0.2)])
def test_timeripple_with_a_cache_works_in_either_order(wan, kind, knob):
    pipe, inputs, stock = wan
    processors = dict(pipe.transformer.attn_processors)
    outs, savings = [], []
    for order in ("timeripple_first", "cache_first"):
        handle = apply_timeripple_with_cache(pipe, CONFIG, kind, knob, order=order)
        try:
            outs.append(generate(pipe, inputs))
            savings.append((handle.total_savings, handle.cache_savings, timeripple.get_stats(pipe).total_savings))
        finally:
            handle.remove()
        _assert_stock(pipe, inputs, stock, processors)
    assert torch.equal(outs[0], outs[1]) and savings[0] == savings[1]
    total, cache_only, tr_only = savings[0]
    assert total > max(cache_only, tr_only)
    # TimeRipple on dense steps only + the cache = the cache alone, bit for bit
    cache = enable_diffusers_cache(pipe, kind, knob)
    try:
        cache_alone = generate(pipe, inputs)
    finally:
        cache.remove()
    never = CONFIG.replace(threshold_start=0.0, threshold_end=0.0)
    handle = apply_timeripple_with_cache(pipe, never, kind, knob, order="cache_first")
    try:
        assert torch.equal(generate(pipe, inputs), cache_alone)
    finally:
        handle.remove()
    # removing in the other order (cache first, then TimeRipple) also restores stock
    handle = apply_timeripple_with_cache(pipe, CONFIG, kind, knob)
    handle.cache.remove()
    handle.timeripple.remove()
    _assert_stock(pipe, inputs, stock, processors)


def test_composition_refuses_a_second_cache(wan):
    pipe, inputs, stock = wan
    cache = enable_diffusers_cache(pipe, "fbc", 0.2)
    try:
        with pytest.raises(ValueError, match="already has a diffusers cache"):
            apply_timeripple_with_cache(pipe, CONFIG, "pab", 2)
        assert getattr(pipe.transformer, "_timeripple_handle", None) is None
    finally:
        cache.remove()
    with pytest.raises(ValueError, match="order"):
        apply_timeripple_with_cache(pipe, CONFIG, "pab", 2, order="both")
