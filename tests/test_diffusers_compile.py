"""``torch.compile`` of a TimeRipple-patched transformer still runs and gives the eager result."""

import os
import sys

import torch

import timeripple

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "examples"))
import _common  # noqa: E402

NUM_STEPS = 3


def test_compiled_transformer_runs_and_matches_eager():
    pipe, inputs = _common.tiny_wan()
    config = timeripple.TimeRippleConfig(threshold_start=1.0, threshold_end=1.0, ramp_start_step=1,
                                         ramp_end_step=1, reference_num_steps=NUM_STEPS)
    timeripple.apply_timeripple(pipe, config)
    try:
        def run():
            return pipe(**inputs, num_inference_steps=NUM_STEPS, output_type="latent",
                        generator=torch.Generator().manual_seed(0)).frames

        eager, eager_stats = run(), timeripple.get_stats(pipe)
        torch._dynamo.reset()
        pipe.transformer.compile(backend="eager")  # cheap: dynamo tracing and graph breaks, no codegen
        compiled, compiled_stats = run(), timeripple.get_stats(pipe)
    finally:
        timeripple.remove_timeripple(pipe)
        torch._dynamo.reset()
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    assert compiled_stats.step_savings == eager_stats.step_savings
    assert compiled_stats.total_savings > 0
