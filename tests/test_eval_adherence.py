"""The prompt-adherence scorer, judged on procedural clips whose truth is known."""

import pytest
import torch

from timeripple.demo.clips import DIRECTIONS, SHAPES, make_clip, render_clips, sample_params, with_fields
from timeripple.demo.adherence import ADHERENCE_PROMPTS, evaluate_adherence, score_adherence

OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}


def test_scores_every_real_clip_correctly():
    params = sample_params(24, 11)
    frames = render_clips(params)
    for video, p in zip(frames, params):
        r = score_adherence(video, p, value_range=(-1, 1))
        assert r["colour"] and r["shape"] and r["direction"] and r["all"], (p.caption, r)


def test_prompt_string_and_unit_range_give_the_same_verdict():
    frames, p = make_clip(2, shape="triangle", direction="up")
    a = score_adherence(frames, p.caption, value_range=(-1, 1))
    b = score_adherence((frames + 1) / 2, p.caption)  # default range (0, 1)
    assert a["all"] and b["all"] and a["detected_shape"] == "triangle"
    assert a["displacement"] == pytest.approx(b["displacement"])


@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_wrong_direction_fails(direction):
    frames, p = make_clip(4, direction=direction)
    r = score_adherence(frames, with_fields(p, direction=OPPOSITE[direction]), value_range=(-1, 1))
    assert r["colour"] and r["shape"] and not r["direction"] and not r["all"]
    assert r["detected_direction"] == direction


def test_wrong_shape_and_colour_fail():
    frames, p = make_clip(6, shape="square", colour="red")
    r = score_adherence(frames, with_fields(p, shape="circle"), value_range=(-1, 1))
    assert r["colour"] and not r["shape"] and r["detected_shape"] == "square"
    r = score_adherence(frames, with_fields(p, colour="blue"), value_range=(-1, 1))
    assert not r["colour"] and not r["shape"] and not r["direction"] and not r["all"]


def test_static_clip_has_no_direction():
    frames, p = make_clip(1, direction="right")
    still = frames[:1].expand_as(frames)
    r = score_adherence(still, p, value_range=(-1, 1))
    assert r["colour"] and r["detected_direction"] is None and not r["direction"]


def test_stray_pixels_do_not_change_the_shape():
    frames, p = make_clip(3, shape="square", colour="yellow", direction="down")
    frames = frames.clone()
    frames[:, :, 0, 31] = torch.tensor([0.9, 0.8, -0.7])[:, None].T  # one yellow pixel per frame, far off
    r = score_adherence(frames, p, value_range=(-1, 1))
    assert r["detected_shape"] == "square" and r["all"]


def test_fixed_prompt_set():
    assert len(ADHERENCE_PROMPTS) == 20 and len({s for _, s in ADHERENCE_PROMPTS}) == 20
    fields = [score for score in ADHERENCE_PROMPTS]
    assert {p.split()[4] for p, _ in fields} == set(DIRECTIONS)
    assert {p.split()[2] for p, _ in fields} == set(SHAPES)


def test_evaluate_adherence_with_a_fake_pipeline_that_renders_the_truth():
    class Truth:
        """Stands in for a pipeline: returns the clip its prompt describes, in [0, 1]."""

        def __call__(self, prompts, generator, output_type, **kwargs):
            assert output_type == "pt" and len(generator) == len(prompts)
            params = []
            for i, prompt in enumerate(prompts):
                words = prompt.split()
                params.append(sample_params(1, i, colour=words[1], shape=words[2], direction=words[4])[0])
            return type("Out", (), {"frames": (render_clips(params) + 1) / 2})()

    prompts = ADHERENCE_PROMPTS[:6]
    out = evaluate_adherence(Truth(), prompts, batch_size=4)
    assert out["n"] == 6 and out["direction"] == 1.0 and out["all"] == 1.0
    assert [r["seed"] for r in out["per_prompt"]] == [s for _, s in prompts]


def test_bad_inputs():
    frames, p = make_clip(0)
    with pytest.raises(ValueError, match="colour"):
        score_adherence(frames, "a circle moving left", value_range=(-1, 1))
    with pytest.raises(ValueError, match=r"\(F, 3, H, W\)"):
        score_adherence(frames[None], p)
    with pytest.raises(TypeError):
        score_adherence(frames, 5)
