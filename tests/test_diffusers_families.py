"""TimeRipple on tiny pipelines of every diffusers family: exactness at threshold 0, real reuse with a
real schedule, dense steps, removal, CFG styles, padding masks, Wan 2.2's two transformers."""

import os
import sys

import pytest
import torch

import timeripple

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "examples"))
import _common  # noqa: E402

NUM_STEPS = 4
FAMILIES = ["wan", "wan22", "hunyuan_video", "cogvideox", "ltx", "mochi"]


def config(threshold_start=1.0, threshold_end=2.0, dense_last_step=True, ramp_start_step=1):
    # steps 0 .. ramp_start_step-1 dense, then reuse, last step dense; large θ so random weights reuse
    return timeripple.TimeRippleConfig(
        threshold_start=threshold_start, threshold_end=threshold_end, ramp_start_step=ramp_start_step,
        ramp_end_step=2, reference_num_steps=NUM_STEPS, dense_last_step=dense_last_step,
    )


def generate(pipe, inputs, seed=0):
    return pipe(**inputs, num_inference_steps=NUM_STEPS, output_type="latent",
                generator=torch.Generator().manual_seed(seed)).frames


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    pipe, inputs = _common.TINY[request.param]()
    return request.param, pipe, inputs, generate(pipe, inputs)


def test_threshold_zero_is_bit_identical_to_stock(family, monkeypatch):
    name, pipe, inputs, stock = family
    if name == "hunyuan_video":  # dropping the padded text keys is lossless, not bit-identical (another SDPA
        # call over fewer keys; its rounding depends on the CPU's kernels): equal up to float32 rounding
        handle = timeripple.apply_timeripple(pipe, config(0.0, 0.0, dense_last_step=False, ramp_start_step=0))
        try:
            dropped = generate(pipe, inputs)
        finally:
            timeripple.remove_timeripple(pipe)
        torch.testing.assert_close(dropped, stock, rtol=1e-4, atol=1e-5)
        from timeripple.diffusers.processors.hunyuan_video import HunyuanVideoTimeRippleAttnProcessor as proc

        monkeypatch.setattr(proc, "drop_padded_text", False)  # the stock masked call: bit-identical
    handle = timeripple.apply_timeripple(pipe, config(0.0, 0.0, dense_last_step=False, ramp_start_step=0))
    try:
        out = generate(pipe, inputs)
        stats = timeripple.get_stats(pipe)
    finally:
        timeripple.remove_timeripple(pipe)
    assert torch.equal(out, stock)
    assert stats.thresholds == [0.0] * NUM_STEPS  # TimeRipple ran on every step, and reused nothing
    assert stats.total_savings == 0.0 and stats.num_calls > 0
    assert not handle.active


def test_real_thresholds_reuse_on_ramp_steps_only_and_removal_restores_stock(family):
    name, pipe, inputs, stock = family
    timeripple.apply_timeripple(pipe, config())
    try:
        out = generate(pipe, inputs)
        stats = timeripple.get_stats(pipe)
    finally:
        timeripple.remove_timeripple(pipe)

    assert not torch.equal(out, stock), "TimeRipple changed nothing: silently dense?"
    rel = (out - stock).norm() / stock.norm()
    assert torch.isfinite(out).all() and rel < 1.0, f"{name}: relative error {rel:.3f}"
    assert stats.num_steps == NUM_STEPS
    assert stats.thresholds[0] is None and stats.thresholds[-1] is None  # dense first and last step
    assert stats.step_savings[0] == 0.0 and stats.step_savings[-1] == 0.0
    assert all(s > 0.1 for s in stats.step_savings[1:-1]), stats.step_savings
    assert 0 < stats.total_savings < 1
    weighted = sum(stats.step_savings) / NUM_STEPS  # every step has the same dense weight here
    assert stats.total_savings == pytest.approx(weighted)
    layers = stats.layer_savings.values()  # Wan 2.2's second transformer may run dense steps only
    assert all(0 <= v < 1 for v in layers) and max(layers) > 0
    assert torch.equal(generate(pipe, inputs), stock)


def test_remove_restores_the_original_processor_objects(family):
    _, pipe, _, _ = family
    transformers = [pipe.transformer] + ([pipe.transformer_2] if getattr(pipe, "transformer_2", None) else [])
    before = [{n: m.processor for n, m in t.named_modules() if hasattr(m, "processor")} for t in transformers]
    handle = timeripple.apply_timeripple(pipe, config())
    swapped = sum(len(o) for o in handle.originals.values())
    assert swapped >= len(transformers)
    for t in transformers:
        assert any(isinstance(m.processor, timeripple.TimeRippleAttnProcessor)
                   for m in t.modules() if hasattr(m, "processor"))
    timeripple.remove_timeripple(pipe)
    after = [{n: m.processor for n, m in t.named_modules() if hasattr(m, "processor")} for t in transformers]
    for b, a in zip(before, after):
        assert b.keys() == a.keys() and all(b[k] is a[k] for k in b)
    for t in transformers:
        assert t._diffusers_hook.get_hook(timeripple.diffusers.HOOK_NAME) is None
        assert "forward" not in vars(t)


def test_only_self_attention_is_swapped():
    pipe, _ = _common.tiny_hunyuan_video()
    timeripple.apply_timeripple(pipe, "hunyuan_video")
    try:
        kinds = {n: type(p).__name__ for n, p in pipe.transformer.attn_processors.items()}
    finally:
        timeripple.remove_timeripple(pipe)
    assert kinds["context_embedder.token_refiner.refiner_blocks.0.attn.processor"] == "AttnProcessor2_0"
    assert kinds["transformer_blocks.0.attn.processor"] == "HunyuanVideoTimeRippleAttnProcessor"
    assert kinds["single_transformer_blocks.0.attn.processor"] == "HunyuanVideoTimeRippleAttnProcessor"

    pipe, _ = _common.tiny_wan()
    timeripple.apply_timeripple(pipe, "wan2.1")
    try:
        kinds = {n: type(p).__name__ for n, p in pipe.transformer.attn_processors.items()}
    finally:
        timeripple.remove_timeripple(pipe)
    assert {k for k, v in kinds.items() if v == "WanTimeRippleAttnProcessor"} == {
        "blocks.0.attn1.processor", "blocks.1.attn1.processor"}
    assert kinds["blocks.0.attn2.processor"] == "WanAttnProcessor"


def test_wan22_patches_both_transformers_and_counts_steps_of_both():
    pipe, inputs = _common.tiny_wan(two_transformers=True)
    handle = timeripple.apply_timeripple(pipe, config(ramp_start_step=0, dense_last_step=False))
    try:
        generate(pipe, inputs)
        stats = handle.stats
    finally:
        timeripple.remove_timeripple(pipe)
    assert set(handle.transformers) == {"transformer", "transformer_2"}
    layers = {f"{t}:{layer}" for t, originals in handle.originals.items() for layer in originals}
    assert len(layers) == 4
    assert stats.num_steps == NUM_STEPS and all(s > 0 for s in stats.step_savings)
    assert set(stats.layer_savings) == {"blocks.0.attn1", "blocks.1.attn1",
                                        "transformer_2.blocks.0.attn1", "transformer_2.blocks.1.attn1"}
    # two CFG calls per step (cond, uncond), two layers, one transformer active per step
    assert stats.num_calls == NUM_STEPS * 2 * 2


def test_hunyuan_padded_text_stays_masked():
    pipe, inputs = _common.tiny_hunyuan_video()
    timeripple.apply_timeripple(pipe, config())
    try:
        out = generate(pipe, inputs)
        changed = dict(inputs, prompt_embeds=inputs["prompt_embeds"].clone())
        changed["prompt_embeds"][:, 10:] = 100.0  # only the padded text tokens (mask = 0) change
        out_changed = generate(pipe, changed)
        stats = timeripple.get_stats(pipe)
    finally:
        timeripple.remove_timeripple(pipe)
    assert stats.total_savings > 0
    torch.testing.assert_close(out_changed, out, rtol=1e-5, atol=1e-5)
    # and the valid text does matter (the test can fail)
    changed["prompt_embeds"][:, :10] += 1.0
    pipe2, _ = _common.tiny_hunyuan_video()
    timeripple.apply_timeripple(pipe2, config())
    try:
        assert not torch.allclose(generate(pipe2, changed), out, atol=1e-5)
    finally:
        timeripple.remove_timeripple(pipe2)


def test_batched_cfg_rows_are_detected_independently():
    # CogVideoX runs CFG as one batch [uncond, cond]: each row must give what it gives alone
    pipe, _ = _common.tiny_cogvideox()
    transformer = pipe.transformer
    scheduler = pipe.scheduler
    scheduler.set_timesteps(NUM_STEPS)
    timeripple.apply_timeripple(transformer, config(ramp_start_step=0), scheduler=scheduler)
    try:
        torch.manual_seed(1)
        latents = torch.randn(2, 3, 4, 4, 6)  # (B, F, C, H, W), grid (3, 2, 3)
        text = torch.randn(2, 16, 32)
        t = scheduler.timesteps[1]

        def run(x, e):
            return transformer(hidden_states=x, encoder_hidden_states=e, timestep=t.expand(x.shape[0]),
                               return_dict=False)[0]

        both = run(latents, text)
        rows = torch.cat([run(latents[i : i + 1], text[i : i + 1]) for i in range(2)])
        assert timeripple.get_stats(transformer).total_savings > 0
    finally:
        timeripple.remove_timeripple(transformer)
    torch.testing.assert_close(both, rows, rtol=1e-5, atol=1e-5)


def test_cogvideox_with_rope():
    pipe, inputs = _common.tiny_cogvideox(rope=True)
    stock = generate(pipe, inputs)
    timeripple.apply_timeripple(pipe, config(0.0, 0.0, dense_last_step=False, ramp_start_step=0))
    try:
        assert torch.equal(generate(pipe, inputs), stock)
    finally:
        timeripple.remove_timeripple(pipe)
    timeripple.apply_timeripple(pipe, config())
    try:
        assert not torch.equal(generate(pipe, inputs), stock)
        assert timeripple.get_stats(pipe).total_savings > 0
    finally:
        timeripple.remove_timeripple(pipe)


@pytest.mark.parametrize("options", [dict(mode="token"), dict(mode="token", budget=0.5)])
def test_token_mode_through_the_processors(family, options):
    """Token mode (the GPU-fast mode) runs through every family's processor: it reuses on the ramp
    steps, changes the output, and removal gives stock back."""
    name, pipe, inputs, stock = family
    cfg = config().replace(**options)
    timeripple.apply_timeripple(pipe, cfg)
    try:
        out = generate(pipe, inputs)
        stats = timeripple.get_stats(pipe)
    finally:
        timeripple.remove_timeripple(pipe)
    assert out.shape == stock.shape and torch.isfinite(out).all()
    assert stats.total_savings > 0, name
    assert stats.step_savings[0] == 0.0 and stats.step_savings[-1] == 0.0  # dense first and last steps
    assert not torch.equal(out, stock), name
    assert torch.equal(generate(pipe, inputs), stock)
