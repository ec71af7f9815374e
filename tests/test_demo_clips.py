"""The procedural clip generator: shapes, ranges, captions, determinism, motion."""

import pytest
import torch

from timeripple.demo.clips import (
    BACKGROUNDS, COLOURS, DIRECTIONS, SHAPES, SPEEDS, STYLES, make_clip, parse_caption, render_clips,
    sample_params, vocabulary,
)


def test_batch_shape_and_range():
    frames = render_clips(sample_params(6, 0))
    assert frames.shape == (6, 9, 3, 32, 32)
    assert frames.dtype == torch.float32
    assert frames.min() >= -1 and frames.max() <= 1
    assert frames.min() < -0.5 and frames.max() > 0.8  # dark backgrounds, bright shapes


def test_same_seed_same_clips_other_seed_differs():
    a, b, c = sample_params(4, 3), sample_params(4, 3), sample_params(4, 4)
    assert a == b and a != c
    assert torch.equal(render_clips(a), render_clips(b))


def test_captions_match_params():
    for p in sample_params(30, 1):
        words = p.caption.split()
        assert words[:2] == ["a", p.colour] and words[2] == p.shape
        assert words[4] == p.direction and words[5] == p.speed
        assert p.background in words and words[-1] == "background"
        assert (STYLES[p.style] in words) if STYLES[p.style] else len(words) == 10
        fields = parse_caption(p.caption)
        assert fields["colour"] == p.colour and fields["background"] == p.background
        assert fields["shape"] == p.shape and fields["direction"] == p.direction
        assert set(words) <= set(vocabulary())


def test_sampling_covers_every_choice():
    ps = sample_params(400, 2)
    for field, choices in (("colour", COLOURS), ("shape", SHAPES), ("direction", DIRECTIONS),
                           ("speed", SPEEDS), ("background", BACKGROUNDS), ("style", STYLES)):
        assert {getattr(p, field) for p in ps} == set(choices), field


@pytest.mark.parametrize("direction", list(DIRECTIONS))
@pytest.mark.parametrize("speed", list(SPEEDS))
def test_shape_moves_as_named_and_stays_inside(direction, speed):
    frames, p = make_clip(5, colour="red", direction=direction, speed=speed, style="plain")
    unit = (frames + 1) / 2
    mask = (unit - torch.tensor(COLOURS["red"])[:, None, None]).norm(dim=1) < 0.1  # (F, H, W)
    ys, xs = torch.meshgrid(torch.arange(32.0) + 0.5, torch.arange(32.0) + 0.5, indexing="ij")
    cx = torch.stack([xs[m].mean() for m in mask])
    cy = torch.stack([ys[m].mean() for m in mask])
    dx, dy = DIRECTIONS[direction]
    travel = SPEEDS[speed] * 8
    assert torch.allclose(cx[-1] - cx[0], torch.tensor(dx * travel), atol=0.3)
    assert torch.allclose(cy[-1] - cy[0], torch.tensor(dy * travel), atol=0.3)
    # the whole shape stays inside: no colour pixels on the border rows/columns
    assert not mask[:, [0, -1], :].any() and not mask[:, :, [0, -1]].any()


def test_fixed_fields_and_bad_values():
    ps = sample_params(5, 0, shape="triangle", colour="white")
    assert all(p.shape == "triangle" and p.colour == "white" for p in ps)
    with pytest.raises(ValueError, match="colour"):
        sample_params(2, 0, colour="pink")
    with pytest.raises(ValueError, match="unknown field"):
        sample_params(2, 0, size="big")
    with pytest.raises(ValueError, match="positive"):
        sample_params(0)
