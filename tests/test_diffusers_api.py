"""apply/remove/get_stats, the set_attn_processor idiom, the step hook and bad input."""

import logging
import os
import sys

import pytest
import torch

import timeripple
from timeripple import TimeRippleAttnProcessor

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "examples"))
import _common  # noqa: E402

NUM_STEPS = 4
CONFIG = timeripple.TimeRippleConfig(
    model_family="wan", threshold_start=1.0, threshold_end=2.0, ramp_start_step=1, ramp_end_step=2,
    reference_num_steps=NUM_STEPS,
)


@pytest.fixture(scope="module")
def wan():
    pipe, inputs = _common.tiny_wan()
    return pipe, inputs, generate(pipe, inputs)


def generate(pipe, inputs, steps=NUM_STEPS):
    return pipe(**inputs, num_inference_steps=steps, output_type="latent",
                generator=torch.Generator().manual_seed(0)).frames


def test_set_attn_processor_idiom(wan):
    pipe, inputs, stock = wan
    processors = timeripple.processors_for_model(pipe.transformer, CONFIG, scheduler=pipe.scheduler)
    assert set(processors) == set(pipe.transformer.attn_processors)
    ours = [p for p in processors.values() if isinstance(p, TimeRippleAttnProcessor)]
    assert len(ours) == 2 and len({id(p) for p in ours}) == 2  # a fresh instance per layer
    assert {p.layer_name for p in ours} == {"blocks.0.attn1", "blocks.1.attn1"}
    pipe.transformer.set_attn_processor(processors)
    try:
        out = generate(pipe, inputs)
        assert timeripple.get_stats(pipe.transformer).total_savings > 0
    finally:
        timeripple.remove_timeripple(pipe.transformer)
    assert not torch.equal(out, stock)
    assert torch.equal(generate(pipe, inputs), stock)


def test_processor_without_context_raises_with_the_fix(wan):
    pipe, inputs, _ = wan
    originals = dict(pipe.transformer.attn_processors)
    pipe.transformer.set_attn_processor(TimeRippleAttnProcessor())
    try:
        with pytest.raises(ValueError, match="for_model"):
            generate(pipe, inputs, steps=1)
    finally:
        pipe.transformer.set_attn_processor(originals)
    # a family processor whose hook is gone
    processors = timeripple.processors_for_model(pipe.transformer, CONFIG, scheduler=pipe.scheduler)
    pipe.transformer.set_attn_processor(dict(processors))
    pipe.transformer._diffusers_hook.remove_hook(timeripple.diffusers.HOOK_NAME, recurse=False)
    try:
        with pytest.raises(ValueError, match="hook has not run"):
            generate(pipe, inputs, steps=1)
    finally:
        timeripple.remove_timeripple(pipe.transformer)
    assert all(pipe.transformer.attn_processors[k] is v for k, v in originals.items())


def test_stats_reset_per_call_and_stay_readable(wan):
    pipe, inputs, _ = wan
    handle = timeripple.apply_timeripple(pipe, CONFIG)
    try:
        generate(pipe, inputs)
        first = timeripple.get_stats(handle)
        generate(pipe, inputs)
        second = timeripple.get_stats(pipe)
        generate(pipe, inputs, steps=3)
        third = handle.stats
    finally:
        timeripple.remove_timeripple(handle)
    assert first.to_dict() == second.to_dict()  # reset, not accumulated
    assert first.num_calls == NUM_STEPS * 2 * 2  # steps x CFG calls x layers
    assert third.num_steps == 3 and len(third.thresholds) == 3
    d = first.to_dict()
    assert d["kind"] == "counted" and d["thresholds"] == [None, 1.0, 2.0, None]
    text = str(first)
    assert "dense" in text and "total" in text and text == first.summary()


def test_apply_twice_and_remove_twice_are_clear_errors(wan):
    pipe, _, _ = wan
    timeripple.apply_timeripple(pipe, CONFIG)
    try:
        with pytest.raises(ValueError, match="already has TimeRipple applied"):
            timeripple.apply_timeripple(pipe, CONFIG)
    finally:
        timeripple.remove_timeripple(pipe)
    with pytest.raises(ValueError, match="not applied"):
        timeripple.remove_timeripple(pipe)
    with pytest.raises(ValueError, match="not applied"):
        timeripple.get_stats(pipe)


def test_unsupported_model_lists_supported_ones():
    with pytest.raises(ValueError, match="WanTransformer3DModel.*HunyuanVideo|HunyuanVideo.*WanTransformer3DModel"):
        timeripple.apply_timeripple(torch.nn.Linear(2, 2), "wan2.1", scheduler=object())
    with pytest.raises(TypeError, match="pipeline"):
        timeripple.apply_timeripple(object(), "wan2.1")
    with pytest.raises(TypeError, match="config"):
        timeripple.apply_timeripple(torch.nn.Linear(2, 2), 0.4)


def test_bare_transformer_needs_a_scheduler(wan):
    pipe, _, _ = wan
    with pytest.raises(ValueError, match="scheduler=pipe.scheduler"):
        timeripple.apply_timeripple(pipe.transformer, CONFIG)
    assert not hasattr(pipe.transformer, "_timeripple_handle")


def test_config_for_another_family_warns_and_runs(wan, caplog):
    pipe, inputs, stock = wan
    with caplog.at_level(logging.WARNING, logger="timeripple"):
        timeripple.apply_timeripple(pipe, CONFIG.replace(model_family="cogvideox"))
    try:
        assert not torch.equal(generate(pipe, inputs), stock)
    finally:
        timeripple.remove_timeripple(pipe)
    assert any("tuned for 'cogvideox'" in r.getMessage() for r in caplog.records)


def test_failed_apply_leaves_nothing_installed(wan, monkeypatch):
    pipe, inputs, stock = wan
    before = dict(pipe.transformer.attn_processors)
    from timeripple.diffusers.processors.wan import WanTimeRippleAttnProcessor

    calls = []

    def broken_init(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        TimeRippleAttnProcessor.__init__(self, *args, **kwargs)

    monkeypatch.setattr(WanTimeRippleAttnProcessor, "__init__", broken_init)
    with pytest.raises(RuntimeError, match="boom"):
        timeripple.apply_timeripple(pipe, CONFIG)
    monkeypatch.undo()
    after = pipe.transformer.attn_processors
    assert all(after[k] is v for k, v in before.items())
    assert not hasattr(pipe.transformer, "_timeripple_handle")
    assert pipe.transformer._diffusers_hook.get_hook(timeripple.diffusers.HOOK_NAME) is None
    assert torch.equal(generate(pipe, inputs), stock)


def test_timestep_not_in_scheduler_is_an_error(wan):
    pipe, _, _ = wan
    scheduler = pipe.scheduler
    scheduler.set_timesteps(NUM_STEPS)
    transformer = pipe.transformer
    timeripple.apply_timeripple(transformer, CONFIG, scheduler=scheduler)
    x = torch.randn(1, 16, 3, 4, 6)
    e = torch.randn(1, 16, 32)
    try:
        transformer(hidden_states=x, timestep=scheduler.timesteps[1:2], encoder_hidden_states=e)  # fine
        assert timeripple.get_stats(transformer).thresholds[1] == 1.0
        with pytest.raises(ValueError, match="not one of the scheduler's timesteps"):
            transformer(hidden_states=x, timestep=torch.tensor([123.456]), encoder_hidden_states=e)
        with pytest.raises(ValueError, match="timestep"):
            transformer(hidden_states=x, timestep=None, encoder_hidden_states=e)
        # per-token timesteps (Wan 2.2 TI2V): the max gives the step
        per_token = scheduler.timesteps[2].expand(1, 18).clone()
        per_token[0, :5] = 0.0
        transformer(hidden_states=x, timestep=per_token, encoder_hidden_states=e)
        assert timeripple.get_stats(transformer).thresholds[2] == 2.0
    finally:
        timeripple.remove_timeripple(transformer)


def test_grid_that_does_not_match_the_sequence(wan):
    pipe, _, _ = wan
    scheduler = pipe.scheduler
    scheduler.set_timesteps(NUM_STEPS)
    spec = timeripple.diffusers.registry.get_family(pipe.transformer)
    timeripple.apply_timeripple(pipe.transformer, CONFIG, scheduler=scheduler)
    hook = pipe.transformer._diffusers_hook.get_hook(timeripple.diffusers.HOOK_NAME)
    hook.grid_fn = lambda module, bound: (3, 3, 3)  # a wrong grid source
    try:
        with pytest.raises(ValueError, match="must equal the sequence length"):
            pipe.transformer(hidden_states=torch.randn(1, 16, 3, 4, 6), timestep=scheduler.timesteps[1:2],
                             encoder_hidden_states=torch.randn(1, 16, 32))
    finally:
        hook.grid_fn = spec.grid
        timeripple.remove_timeripple(pipe.transformer)


def test_mochi_without_set_attn_processor():
    pipe, inputs = _common.tiny_mochi()
    assert not hasattr(pipe.transformer, "set_attn_processor")
    with pytest.raises(ValueError, match="apply_timeripple"):
        timeripple.processors_for_model(pipe.transformer, "wan2.1", scheduler=pipe.scheduler)
    assert not hasattr(pipe.transformer, "_timeripple_handle")
    stock = generate(pipe, inputs)
    timeripple.apply_timeripple(pipe, CONFIG)
    try:
        assert not torch.equal(generate(pipe, inputs), stock)
    finally:
        timeripple.remove_timeripple(pipe)
    assert torch.equal(generate(pipe, inputs), stock)


def test_lazy_exports_resolve():
    import timeripple.diffusers as td

    for name in ("apply_timeripple", "remove_timeripple", "get_stats", "TimeRippleAttnProcessor",
                 "TimeRippleHandle", "GenerationStats"):
        assert getattr(timeripple, name) is getattr(td, name)


def test_apply_keeps_the_attention_backend(wan):
    pipe, inputs, stock = wan
    pipe.transformer.set_attention_backend("native")
    try:
        timeripple.apply_timeripple(pipe, CONFIG)
        try:
            ours = [p for p in pipe.transformer.attn_processors.values() if isinstance(p, TimeRippleAttnProcessor)]
            assert ours and all(str(p._attention_backend.value) == "native" for p in ours)
        finally:
            timeripple.remove_timeripple(pipe)
    finally:
        for p in pipe.transformer.attn_processors.values():
            p._attention_backend = None
    assert torch.equal(generate(pipe, inputs), stock)


def test_bf16_timesteps_that_collide_get_the_scheduler_step(wan):
    """HunyuanVideo passes the timestep in the latents' dtype; in bf16, neighbouring timesteps near
    1000 round to the same value. The scheduler's own step index must then decide the step."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    pipe, _, _ = wan
    scheduler = FlowMatchEulerDiscreteScheduler(shift=7.0)
    steps = 50
    scheduler.set_timesteps(steps)
    rounded = scheduler.timesteps.to(torch.bfloat16)
    assert len(set(rounded.tolist())) < steps, "this schedule must have colliding bf16 timesteps"
    transformer = pipe.transformer
    config = CONFIG.replace(reference_num_steps=steps, ramp_start_step=0, ramp_end_step=steps - 1)
    handle = timeripple.apply_timeripple(transformer, config, scheduler=scheduler)
    x = torch.randn(1, 16, 3, 4, 6)
    e = torch.randn(1, 16, 32)
    try:
        for t in scheduler.timesteps:
            out = transformer(hidden_states=x, timestep=t.to(torch.bfloat16).expand(1), encoder_hidden_states=e,
                              return_dict=False)[0]
            x = scheduler.step(out, t, x, return_dict=False)[0]
        per_step = [handle.recorder.per_step[i][0] for i in range(steps)]  # products counted per step
    finally:
        timeripple.remove_timeripple(transformer)
    assert per_step[0] > 0 and all(w == per_step[0] for w in per_step), per_step
