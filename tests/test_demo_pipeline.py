"""TinyT2VPipeline: end to end with the shipped weights, Wan-like calls, bad sizes, bad weights."""

import contextlib
import shutil

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from timeripple.demo import load_tiny_pipeline, save_tiny_weights, shipped_weights_dir
from timeripple.demo.model import SHIFT, build_tiny_transformer, frame_clock, with_frame_clock
from timeripple.demo.pipeline import TinyT2VPipeline
from timeripple.demo.text import build_text_encoder

PROMPT = "a red circle moving right quickly on a gray background"


@pytest.fixture(scope="module")
def pipe():
    p = load_tiny_pipeline()
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def small_pipe():
    """Random weights with a 1-layer transformer: checks the call mechanics quickly."""
    torch.manual_seed(0)
    tok, enc = build_text_encoder(num_layers=1)
    tr = build_tiny_transformer(num_layers=1)
    p = TinyT2VPipeline(tok, enc, tr, FlowMatchEulerDiscreteScheduler(shift=SHIFT))
    p.set_progress_bar_config(disable=True)
    return p


def test_shipped_pipeline_generates_a_video(pipe):
    g = torch.Generator().manual_seed(0)
    out = pipe(PROMPT, num_inference_steps=4, generator=g)
    video = out.frames
    assert video.shape == (1, 9, 3, 32, 32) and 0 <= video.min() and video.max() <= 1
    assert pipe.num_timesteps == 4 and pipe.current_timestep is None
    again = pipe(PROMPT, num_inference_steps=4, generator=torch.Generator().manual_seed(0)).frames
    assert torch.equal(video, again)
    other = pipe(PROMPT, num_inference_steps=4, generator=torch.Generator().manual_seed(1)).frames
    assert not torch.equal(video, other)


def test_transformer_is_called_like_wan(small_pipe, monkeypatch):
    calls, context = [], []
    tr = small_pipe.transformer
    original = tr.cache_context

    @contextlib.contextmanager
    def recording_context(name, **kwargs):
        context.append((name, kwargs["step_index"]))
        with original(name, **kwargs):
            yield

    def spy(module, args, kwargs):
        calls.append((args, sorted(kwargs), kwargs["timestep"].clone(), context[-1][0]))

    monkeypatch.setattr(tr, "cache_context", recording_context)
    handle = tr.register_forward_pre_hook(spy, with_kwargs=True)
    try:
        small_pipe(["a blue square", "a red circle"], num_inference_steps=3, guidance_scale=4.0)
    finally:
        handle.remove()
    assert context == [("cond", 0), ("uncond", 0), ("cond", 1), ("uncond", 1), ("cond", 2), ("uncond", 2)]
    assert len(calls) == 6  # two per step (cond, uncond)
    assert all(args == () for args, *_ in calls)
    assert calls[0][1] == ["attention_kwargs", "encoder_hidden_states", "hidden_states", "return_dict", "timestep"]
    assert [c[3] for c in calls[:2]] == ["cond", "uncond"]
    steps = small_pipe.scheduler.timesteps
    for i, (_, _, t, _) in enumerate(calls):
        assert t.shape == (2,) and torch.all(t == steps[i // 2])


def test_frame_clock_is_an_absolute_time_ramp():
    clock = frame_clock(2, 5, 3, 4)
    assert clock.shape == (2, 1, 5, 3, 4)
    assert torch.equal(clock[1, 0, :, 2, 3], torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0]))
    assert torch.equal(frame_clock(1, 1, 2, 2), torch.zeros(1, 1, 1, 2, 2))


def test_with_frame_clock_follows_the_transformer_config():
    x = torch.randn(2, 3, 4, 6, 6)
    clocked = with_frame_clock(x, build_tiny_transformer(num_layers=1).config)  # in 4, out 3
    assert clocked.shape == (2, 4, 4, 6, 6) and torch.equal(clocked[:, :3], x)
    assert torch.equal(clocked[:, 3:], frame_clock(2, 4, 6, 6))
    assert with_frame_clock(x, build_tiny_transformer(num_layers=1, in_channels=3).config) is x
    with pytest.raises(ValueError, match="in_channels"):
        with_frame_clock(x, build_tiny_transformer(num_layers=1, in_channels=5).config)


def test_pipeline_feeds_the_clock_and_denoises_rgb(small_pipe):
    seen = []
    h = small_pipe.transformer.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["hidden_states"]),
                                                        with_kwargs=True)
    try:
        out = small_pipe("a red circle", num_inference_steps=2, guidance_scale=1.0, output_type="latent")
    finally:
        h.remove()
    assert out.frames.shape == (1, 3, 9, 32, 32)  # RGB out
    assert all(x.shape == (1, 4, 9, 32, 32) for x in seen)  # RGB + clock in
    assert torch.equal(seen[0][:, 3:].float(), frame_clock(1, 9, 32, 32))


def test_no_guidance_makes_one_call_per_step(small_pipe):
    seen = []
    h = small_pipe.transformer.register_forward_pre_hook(lambda m, a: seen.append(1))
    try:
        small_pipe("a red circle", num_inference_steps=2, guidance_scale=1.0)
    finally:
        h.remove()
    assert len(seen) == 2


def test_callback_output_types_and_empty_prompt(small_pipe):
    seen = []

    def callback(p, i, t, tensors):
        seen.append((i, float(t), p.current_timestep is not None, tuple(tensors["latents"].shape)))
        return {}

    frames = small_pipe("", num_inference_steps=2, output_type="np", callback_on_step_end=callback).frames
    assert frames.shape == (1, 9, 32, 32, 3)
    assert [s[0] for s in seen] == [0, 1] and all(s[2] for s in seen) and seen[0][3] == (1, 3, 9, 32, 32)
    pil = small_pipe("a green triangle", num_inference_steps=1, output_type="pil").frames
    assert len(pil) == 1 and len(pil[0]) == 9 and pil[0][0].size == (32, 32)
    latent = small_pipe("a green triangle", num_inference_steps=1, output_type="latent", return_dict=False)[0]
    assert latent.shape == (1, 3, 9, 32, 32)


@pytest.mark.parametrize("size", [dict(num_frames=8), dict(height=48), dict(width=30)])
def test_unsupported_sizes_are_rejected_with_what_works(small_pipe, size):
    with pytest.raises(ValueError, match="num_frames=9, height=32, width=32"):
        small_pipe("a red circle", num_inference_steps=1, **size)


def test_other_bad_arguments(small_pipe):
    with pytest.raises(ValueError, match="output_type"):
        small_pipe("a red circle", num_inference_steps=1, output_type="mp4")
    with pytest.raises(ValueError, match="prompt"):
        small_pipe(num_inference_steps=1)
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs"):
        small_pipe("a", num_inference_steps=1, callback_on_step_end_tensor_inputs=["noise"])


def test_missing_weights_say_how_to_reinstall_or_retrain(tmp_path):
    shutil.copytree(shipped_weights_dir(), tmp_path / "w")
    (tmp_path / "w" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors") as err:
        load_tiny_pipeline(weights_dir=tmp_path / "w")
    assert "pip install --force-reinstall timeripple" in str(err.value)
    assert "tools/train_tiny_t2v.py" in str(err.value)


def test_corrupt_weights_say_how_to_reinstall_or_retrain(tmp_path):
    shutil.copytree(shipped_weights_dir(), tmp_path / "w")
    path = tmp_path / "w" / "model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="corrupt") as err:
        load_tiny_pipeline(weights_dir=tmp_path / "w")
    assert "pip install --force-reinstall timeripple" in str(err.value)


def test_save_and_load_round_trip(tmp_path, small_pipe):
    save_tiny_weights(tmp_path, small_pipe.transformer, small_pipe.text_encoder, small_pipe.scheduler,
                      dtype=torch.float32)
    loaded = load_tiny_pipeline(weights_dir=tmp_path)
    for a, b in zip(small_pipe.transformer.state_dict().values(), loaded.transformer.state_dict().values()):
        assert torch.equal(a, b)
    assert loaded.scheduler.config.shift == SHIFT
