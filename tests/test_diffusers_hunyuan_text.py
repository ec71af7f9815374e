"""HunyuanVideo: the processors drop the padded text keys (lossless) instead of masking them, on dense
and reuse steps; ``drop_padded_text = False`` keeps the stock masked call (bit-identical)."""

import os
import sys

import pytest
import torch

import timeripple
from timeripple.diffusers.processors import base as base_module

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "examples"))
import _common  # noqa: E402

STEPS = 4


def cfg(**kw):
    return timeripple.TimeRippleConfig(threshold_start=1.0, threshold_end=2.0, ramp_start_step=1, ramp_end_step=2,
                                       reference_num_steps=STEPS, **kw)


@pytest.fixture(scope="module")
def model():
    pipe, _ = _common.tiny_hunyuan_video()
    transformer = pipe.transformer.eval()
    scheduler = pipe.scheduler
    scheduler.set_timesteps(STEPS)
    torch.manual_seed(3)
    mask = torch.zeros(1, 16, dtype=torch.long)
    mask[:, :10] = 1  # 10 valid text tokens, 6 padding
    inputs = dict(hidden_states=torch.randn(1, 4, 3, 4, 6), encoder_hidden_states=torch.randn(1, 16, 16),
                  encoder_attention_mask=mask, pooled_projections=torch.randn(1, 8),
                  guidance=torch.tensor([4500.0]))
    return transformer, scheduler, inputs


def run(transformer, scheduler, inputs, step):
    with torch.no_grad():
        return transformer(**inputs, timestep=scheduler.timesteps[step].expand(1), return_dict=False)[0]


def with_timeripple(model, config, step, drop=True):
    transformer, scheduler, inputs = model
    timeripple.apply_timeripple(transformer, config, scheduler=scheduler)
    try:
        for proc in transformer.attn_processors.values():
            if isinstance(proc, timeripple.TimeRippleAttnProcessor):
                proc.drop_padded_text = drop
        return run(transformer, scheduler, inputs, step)
    finally:
        timeripple.remove_timeripple(transformer)


def test_dense_step_drops_padded_keys_and_equals_stock(model, monkeypatch):
    transformer, scheduler, inputs = model
    stock = run(transformer, scheduler, inputs, 0)
    masks = []
    real = base_module.dispatch_attention_fn
    monkeypatch.setattr(base_module, "dispatch_attention_fn",
                        lambda q, k, v, attn_mask=None, **kw: masks.append((attn_mask, k.shape[1])) or
                        real(q, k, v, attn_mask=attn_mask, **kw))
    dropped = with_timeripple(model, cfg(), 0)
    assert masks and all(m is None for m, _ in masks)  # no mask reached the dense SDPA call
    n_video = 3 * 4 * 6
    assert all(n_keys == n_video + 10 for _, n_keys in masks)  # the 6 padded keys were dropped
    torch.testing.assert_close(dropped, stock, rtol=1e-5, atol=1e-5)
    masks.clear()
    kept = with_timeripple(model, cfg(), 0, drop=False)
    assert torch.equal(kept, stock)  # the stock masked call, bit-identical
    assert masks and all(m is not None for m, _ in masks)


@pytest.mark.parametrize("mode,extra", [("channel", {}), ("token", {}), ("token", {"budget": 0.5}),
                                        ("token", {"budget": 0.5, "token_keys": "pairs", "key_budget": 1.0})])
def test_reuse_step_with_dropped_keys_equals_masked_path(model, mode, extra):
    config = cfg(mode=mode, **extra)
    masked = with_timeripple(model, config, 1, drop=False)
    dropped = with_timeripple(model, config, 1)
    stock = run(*model, 1)
    assert not torch.allclose(dropped, stock, atol=1e-4)  # the step really reused something
    torch.testing.assert_close(dropped, masked, rtol=1e-4, atol=1e-4)


def test_unequal_text_lengths_keep_the_mask(model):
    transformer, scheduler, inputs = model
    two = {k: (torch.cat([v, v]) if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}
    two["encoder_attention_mask"] = two["encoder_attention_mask"].clone()
    two["encoder_attention_mask"][1, 10:13] = 1  # row 1 has 13 valid tokens: no common prefix
    with torch.no_grad():
        stock = transformer(**two, timestep=scheduler.timesteps[0].expand(2), return_dict=False)[0]
    timeripple.apply_timeripple(transformer, cfg(), scheduler=scheduler)
    try:
        with torch.no_grad():
            got = transformer(**two, timestep=scheduler.timesteps[0].expand(2), return_dict=False)[0]
    finally:
        timeripple.remove_timeripple(transformer)
    assert torch.equal(got, stock)
