"""apply_timeripple under faults and misuse (issue 12): interrupted calls, stale handles, custom or
fused processors, pickling and copies, a second pipeline over the same components, a missing scheduler."""

import copy
import io
import os
import pickle
import sys

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline
from diffusers.models.transformers.transformer_wan import WanAttnProcessor

import timeripple
from timeripple import TimeRippleAttnProcessor
from timeripple.diffusers import HOOK_NAME

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


def generate(pipe, inputs, steps=NUM_STEPS, **kw):
    return pipe(**inputs, num_inference_steps=steps, output_type="latent",
                generator=torch.Generator().manual_seed(0), **kw).frames


def _ours(transformer):
    return [p for p in transformer.attn_processors.values() if isinstance(p, TimeRippleAttnProcessor)]


def test_stats_after_a_call_interrupted_at_step_0(wan):
    pipe, inputs, _ = wan
    with timeripple_applied(pipe) as handle:
        generate(pipe, inputs)
        clean = handle.stats

        def stop(*args):
            raise KeyboardInterrupt("stopped by the user")

        with pytest.raises(KeyboardInterrupt):
            generate(pipe, inputs, callback_on_step_end=stop)
        generate(pipe, inputs)
        assert handle.stats == clean


def test_stale_handle_remove_does_not_undo_the_new_one(wan):
    pipe, inputs, stock = wan
    first = timeripple.apply_timeripple(pipe, CONFIG)
    first.remove()
    second = timeripple.apply_timeripple(pipe, CONFIG)
    try:
        first.remove()  # stale: a no-op
        assert second.active and len(_ours(pipe.transformer)) == 2
        assert pipe.transformer._diffusers_hook.get_hook(HOOK_NAME) is not None
        assert not torch.equal(generate(pipe, inputs), stock)
        assert second.stats.total_savings > 0
    finally:
        second.remove()
    assert torch.equal(generate(pipe, inputs), stock)


class CountingProcessor(WanAttnProcessor):
    calls = 0

    def __call__(self, *args, **kwargs):
        CountingProcessor.calls += 1
        return super().__call__(*args, **kwargs)


def test_custom_processor_on_a_self_attention_layer_is_refused(wan):
    pipe, inputs, _ = wan
    attn = pipe.transformer.blocks[1].attn1
    stock_processor = attn.processor
    attn.set_processor(CountingProcessor())
    try:
        with pytest.raises(ValueError, match=r"blocks\.1\.attn1\.processor.*CountingProcessor.*stock"):
            timeripple.apply_timeripple(pipe, CONFIG)
        with pytest.raises(ValueError, match="CountingProcessor"):
            timeripple.processors_for_model(pipe.transformer, CONFIG, scheduler=pipe.scheduler)
        assert not hasattr(pipe.transformer, "_timeripple_handle") and not _ours(pipe.transformer)
        assert pipe.transformer._diffusers_hook.get_hook(HOOK_NAME) is None
        assert isinstance(pipe.transformer.blocks[0].attn1.processor, WanAttnProcessor)  # untouched
    finally:
        attn.set_processor(stock_processor)


def test_pickle_and_torch_save_while_applied(wan):
    pipe, inputs, stock = wan
    with timeripple_applied(pipe):
        ripple = generate(pipe, inputs)
        clone = pickle.loads(pickle.dumps(pipe))
        buffer = io.BytesIO()
        torch.save(pipe.transformer, buffer)
    assert torch.equal(generate(clone, inputs), ripple)
    assert timeripple.get_stats(clone).total_savings > 0
    buffer.seek(0)
    transformer = torch.load(buffer, weights_only=False)
    assert len(_ours(transformer)) == 2
    timeripple.remove_timeripple(clone)
    assert torch.equal(generate(clone, inputs), stock)


def test_deepcopy_runs_its_own_hook_and_model(wan):
    pipe, inputs, stock = wan
    with timeripple_applied(pipe) as handle:
        ripple = generate(pipe, inputs)
        calls = handle.stats.num_calls
        clone = copy.deepcopy(pipe)
        with torch.no_grad():
            for p in clone.transformer.parameters():
                p.mul_(1.01)  # the copy's own weights must be the ones used
        out = generate(clone, inputs)
        assert handle.stats.num_calls == calls  # the original's statistics are untouched
        assert timeripple.get_stats(clone).num_calls == calls
        assert not torch.equal(out, ripple)
        timeripple.remove_timeripple(clone)
        assert handle.active and torch.equal(generate(pipe, inputs), ripple)
    assert torch.equal(generate(pipe, inputs), stock)


def test_for_model_on_a_pipeline_with_two_transformers_names_both():
    pipe, _ = _common.tiny_wan(two_transformers=True)
    with pytest.raises(TypeError, match=r"pipe\.transformer.*pipe\.transformer_2"):
        timeripple.processors_for_model(pipe, CONFIG, scheduler=pipe.scheduler)


def test_processors_replaced_after_apply_are_an_error_not_silently_stock():
    pipe, inputs = _common.tiny_cogvideox()
    config = CONFIG.replace(model_family="cogvideox")
    handle = timeripple.apply_timeripple(pipe, config)
    try:
        pipe.fuse_qkv_projections()
        with pytest.raises(ValueError, match=r"transformer_blocks\.0\.attn1\.processor.*replaced"):
            generate(pipe, inputs, steps=2)
    finally:
        handle.remove()  # puts the original processors back
    pipe.fuse_qkv_projections()
    with pytest.raises(ValueError, match="unfuse_qkv_projections"):  # fused before apply: refused
        timeripple.apply_timeripple(pipe, config)
    pipe.unfuse_qkv_projections()
    # for_model whose dict was never installed: refused at the first call
    timeripple.processors_for_model(pipe.transformer, config, scheduler=pipe.scheduler)
    try:
        with pytest.raises(ValueError, match="set_attn_processor"):
            generate(pipe, inputs, steps=2)
    finally:
        timeripple.remove_timeripple(pipe.transformer)


def test_a_second_pipeline_with_another_scheduler_is_refused(wan):
    pipe, inputs, _ = wan
    with timeripple_applied(pipe):
        generate(pipe, inputs)
        # same kind of schedule at 2 steps: its first timestep (1000) is also step 0 of `pipe`'s
        other = WanPipeline(**{**pipe.components, "scheduler": FlowMatchEulerDiscreteScheduler(shift=7.0)})
        with pytest.raises(ValueError, match="not the scheduler driving this loop"):
            generate(other, inputs, steps=2)
        fresh, _ = _common.tiny_wan()  # never-run scheduler, components of `pipe`
        second = WanPipeline(**{**pipe.components, "scheduler": fresh.scheduler})
        with pytest.raises(ValueError, match="not the scheduler driving this loop"):
            generate(second, inputs)


def test_no_scheduler_says_so(wan):
    pipe, _, _ = wan
    scheduler = pipe.scheduler
    with timeripple_applied(pipe):
        pipe.scheduler = None  # then the transformer called in one's own loop
        try:
            with pytest.raises(ValueError, match=r"set `pipe\.scheduler`"):
                pipe.transformer(hidden_states=torch.randn(1, 16, 3, 4, 6), timestep=torch.tensor([999.0]),
                                 encoder_hidden_states=torch.randn(1, 16, 32))
        finally:
            pipe.scheduler = scheduler


def test_path_config_is_accepted(wan, tmp_path):
    pipe, inputs, stock = wan
    path = tmp_path / "cfg.yaml"
    CONFIG.to_yaml(path)
    with timeripple_applied(pipe, path) as handle:
        assert handle.config == CONFIG
        assert not torch.equal(generate(pipe, inputs), stock)


class timeripple_applied:  # noqa: N801  (a context manager used like a function)
    def __init__(self, pipe, config=CONFIG):
        self.pipe, self.config = pipe, config

    def __enter__(self):
        self.handle = timeripple.apply_timeripple(self.pipe, self.config)
        return self.handle

    def __exit__(self, *exc):
        self.handle.remove()
