"""Procedural training clips of the embedded demo: coloured shapes moving over simple backgrounds.

Every clip is fully described by a :class:`ClipParams` record, from which both the frames and the
caption are derived, e.g. ``"a red circle moving right quickly on a gray gradient background"``.
Rendering is vectorised over the batch and runs on any device (the trainer renders on the GPU).

Frames are RGB in ``[-1, 1]``, shaped ``(F, 3, H, W)`` per clip (``(B, F, 3, H, W)`` for a batch).
Pixel ``(y, x)`` has its centre at ``(y + 0.5, x + 0.5)``; ``y`` grows downwards, so "up" moves to
smaller ``y``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import torch

from .._validation import type_error, value_error
from .model import HEIGHT, NUM_FRAMES, WIDTH

# Bright, saturated shape colours (RGB in [0, 1]); all far from each other and from the backgrounds.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.95, 0.15, 0.12),
    "green": (0.15, 0.85, 0.20),
    "blue": (0.20, 0.40, 1.00),
    "yellow": (0.95, 0.90, 0.15),
    "white": (0.95, 0.95, 0.95),
    "cyan": (0.10, 0.90, 0.90),
    "magenta": (0.90, 0.20, 0.90),
}
# Dark, muted background colours.
BACKGROUNDS: dict[str, tuple[float, float, float]] = {
    "black": (0.05, 0.05, 0.05),
    "gray": (0.38, 0.38, 0.38),
    "navy": (0.06, 0.08, 0.32),
    "maroon": (0.32, 0.06, 0.06),
    "olive": (0.28, 0.28, 0.06),
    "purple": (0.26, 0.08, 0.32),
    "teal": (0.04, 0.28, 0.28),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# Unit displacement per frame, in (x, y) image coordinates.
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
# Pixels per frame.
SPEEDS: dict[str, float] = {"slowly": 1.0, "quickly": 2.0}
# Background styles and the word each adds to the caption ("" = none).
STYLES: dict[str, str] = {"plain": "", "gradient": "gradient", "textured": "textured"}
# Fixed words of the caption template.
TEMPLATE_WORDS: tuple[str, ...] = ("a", "an", "moving", "on", "background")

RADIUS_RANGE = (5.0, 6.5)  # shape "radius" in pixels (circle radius; square/triangle scale with it)
_MARGIN = RADIUS_RANGE[1] + 1.0  # keep every shape fully inside the frame


def vocabulary() -> list[str]:
    """Every word the generator can put in a caption, sorted (the demo tokenizer's vocabulary)."""
    words = set(TEMPLATE_WORDS) | set(COLOURS) | set(BACKGROUNDS) | set(SHAPES) | set(DIRECTIONS)
    words |= set(SPEEDS) | {w for w in STYLES.values() if w}
    return sorted(words)


@dataclass(frozen=True)
class ClipParams:
    """Everything that defines one clip.

    Args:
        colour (`str`): key of :data:`COLOURS`.
        shape (`str`): one of :data:`SHAPES`.
        direction (`str`): key of :data:`DIRECTIONS`.
        speed (`str`): key of :data:`SPEEDS` (``"slowly"`` = 1 px/frame, ``"quickly"`` = 2 px/frame).
        background (`str`): key of :data:`BACKGROUNDS`.
        style (`str`): key of :data:`STYLES`.
        start (`tuple[float, float]`): ``(x, y)`` of the shape centre in the first frame, in pixels.
        radius (`float`): size of the shape in pixels.
        pattern (`float`): in ``[0, 1)``; gradient angle / texture phase of the background.
    """

    colour: str
    shape: str
    direction: str
    speed: str
    background: str
    style: str
    start: tuple[float, float]
    radius: float
    pattern: float

    @property
    def caption(self) -> str:
        """The caption, e.g. ``"a red circle moving right quickly on a gray gradient background"``."""
        style = STYLES[self.style]
        bg = f"{self.background} {style}" if style else self.background
        article = "an" if bg[0] in "aeiou" else "a"
        return f"a {self.colour} {self.shape} moving {self.direction} {self.speed} on {article} {bg} background"


_CHOICES = {
    "colour": tuple(COLOURS), "shape": SHAPES, "direction": tuple(DIRECTIONS), "speed": tuple(SPEEDS),
    "background": tuple(BACKGROUNDS), "style": tuple(STYLES),
}


def _check_choice(field: str, value: str) -> None:
    if value not in _CHOICES[field]:
        raise value_error(field, value, f"unknown {field}", f"use one of {list(_CHOICES[field])}")


def sample_params(
    n: int,
    generator: torch.Generator | int | None = None,
    *,
    num_frames: int = NUM_FRAMES,
    height: int = HEIGHT,
    width: int = WIDTH,
    **fixed: str,
) -> list[ClipParams]:
    """Draw ``n`` random clip descriptions.

    Args:
        n (`int`): how many.
        generator (`torch.Generator` or `int`, *optional*): a CPU generator or a seed; the same seed
            always gives the same clips, on every machine.
        num_frames, height, width (`int`): the clip size the start positions must fit.
        **fixed: pin a categorical field to a value, e.g. ``colour="red", direction="up"``.

    Returns:
        `list[ClipParams]`

    Example:

    ```py
    >>> from timeripple.demo.clips import sample_params
    >>> sample_params(1, 0, colour="red")[0].colour
    'red'
    ```
    """
    if not isinstance(n, int) or n < 1:
        raise value_error("n", n, "must be a positive int", "pass the number of clips wanted, e.g. 8")
    for field, value in fixed.items():
        if field not in _CHOICES:
            raise value_error("fixed", field, "unknown field", f"fix some of {list(_CHOICES)}")
        _check_choice(field, value)
    if generator is None or isinstance(generator, int):
        generator = torch.Generator().manual_seed(0 if generator is None else generator)
    elif not isinstance(generator, torch.Generator):
        raise type_error("generator", generator, "a torch.Generator, an int seed or None", "pass a seed")
    picks = {f: torch.randint(len(c), (n,), generator=generator).tolist() for f, c in _CHOICES.items()}
    u = torch.rand(n, 4, generator=generator, dtype=torch.float64).tolist()
    out = []
    for i in range(n):
        fields = {f: fixed.get(f, _CHOICES[f][picks[f][i]]) for f in _CHOICES}
        dx, dy = DIRECTIONS[fields["direction"]]
        travel = SPEEDS[fields["speed"]] * (num_frames - 1)
        start = []
        for size, step, ui in ((width, dx, u[i][0]), (height, dy, u[i][1])):
            lo, hi = _MARGIN, size - _MARGIN
            if step > 0:
                hi -= travel
            elif step < 0:
                lo += travel
            if hi < lo:
                raise value_error(
                    "num_frames", num_frames, f"the motion does not fit in a {height}x{width} frame",
                    "use fewer frames or a larger frame",
                )
            start.append(round(lo + (hi - lo) * ui, 3))
        radius = round(RADIUS_RANGE[0] + (RADIUS_RANGE[1] - RADIUS_RANGE[0]) * u[i][2], 3)
        out.append(ClipParams(**fields, start=tuple(start), radius=radius, pattern=round(u[i][3], 4)))
    return out


def _signed_distance(shape_id, px, py, radius):
    """Signed distance (pixels, > 0 inside) of every pixel to each shape; all args broadcast."""
    dx, dy = px, py  # offsets from the shape centre (bounding-box centre for the triangle)
    circle = radius - torch.sqrt(dx * dx + dy * dy)
    half = 0.9 * radius
    square = half - torch.maximum(dx.abs(), dy.abs())
    # Upward isosceles triangle: apex (0, -h/2), base corners (+-w, h/2).
    h, w = 2.1 * radius, 1.15 * radius
    base = h / 2 - dy
    norm = torch.sqrt(h * h + w * w)
    # Side lines through the apex; positive on the inner side of each.
    right = (-h * dx + w * dy + w * h / 2) / norm
    left = (h * dx + w * dy + w * h / 2) / norm
    triangle = torch.minimum(base, torch.minimum(left, right))
    return torch.where(shape_id == 0, circle, torch.where(shape_id == 1, square, triangle))


def render_clips(
    params: Sequence[ClipParams],
    *,
    num_frames: int = NUM_FRAMES,
    height: int = HEIGHT,
    width: int = WIDTH,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Render clip descriptions to frames, all at once.

    Args:
        params (`Sequence[ClipParams]`): from :func:`sample_params`.
        num_frames, height, width (`int`): clip size (defaults: the shipped model's 9 x 32 x 32).
        device: where to render (the trainer renders on the GPU).

    Returns:
        `torch.Tensor`: float32 ``(B, F, 3, H, W)`` in ``[-1, 1]``.

    Example:

    ```py
    >>> from timeripple.demo.clips import render_clips, sample_params
    >>> render_clips(sample_params(2, 0)).shape
    torch.Size([2, 9, 3, 32, 32])
    ```
    """
    if isinstance(params, ClipParams):
        params = [params]
    if len(params) == 0:
        raise value_error("params", params, "must not be empty", "pass at least one ClipParams")
    kw = {"device": device, "dtype": torch.float32}
    colour = torch.tensor([COLOURS[p.colour] for p in params], **kw)[:, None, :, None, None]
    bg = torch.tensor([BACKGROUNDS[p.background] for p in params], **kw)[:, :, None, None]
    shape_id = torch.tensor([SHAPES.index(p.shape) for p in params], device=device)[:, None, None, None]
    style = torch.tensor([list(STYLES).index(p.style) for p in params], device=device)[:, None, None, None]
    vel = torch.tensor(
        [[d * SPEEDS[p.speed] for d in DIRECTIONS[p.direction]] for p in params], **kw
    )  # (B, 2)
    start = torch.tensor([p.start for p in params], **kw)  # (B, 2)
    radius = torch.tensor([p.radius for p in params], **kw)[:, None, None, None]
    pattern = torch.tensor([p.pattern for p in params], **kw)[:, None, None, None]

    t = torch.arange(num_frames, **kw)
    centre = start[:, None, :] + t[None, :, None] * vel[:, None, :]  # (B, F, 2)
    ys = torch.arange(height, **kw)[:, None] + 0.5
    xs = torch.arange(width, **kw)[None, :] + 0.5
    px = xs[None, None] - centre[..., 0, None, None]  # (B, F, H, W)
    py = ys[None, None] - centre[..., 1, None, None]
    alpha = (_signed_distance(shape_id, px, py, radius) + 0.5).clamp(0.0, 1.0)  # (B, F, H, W)

    # Background (B, 3, H, W): plain, linear gradient at angle 2*pi*pattern, or a checker texture.
    angle = 2 * math.pi * pattern
    ramp = (torch.cos(angle) * (xs / width - 0.5) + torch.sin(angle) * (ys / height - 0.5)) * 1.4
    gradient = bg * (1.0 + ramp)
    shift = torch.floor(pattern * 4)
    checker = ((torch.floor((xs + shift) / 4) + torch.floor((ys + shift) / 4)) % 2) * 2 - 1
    textured = bg + 0.08 * checker
    background = torch.where(style == 0, bg.expand_as(gradient), torch.where(style == 1, gradient, textured))
    background = background.clamp(0.0, 1.0)

    a = alpha[:, :, None]  # (B, F, 1, H, W)
    frames = a * colour + (1 - a) * background[:, None]
    return frames * 2 - 1


def make_clip(seed: int = 0, **fixed: str) -> tuple[torch.Tensor, ClipParams]:
    """One seeded clip and its description: ``(frames (F, 3, H, W) in [-1, 1], params)``.

    Example:

    ```py
    >>> from timeripple.demo.clips import make_clip
    >>> frames, params = make_clip(3, shape="triangle", direction="up")
    >>> frames.shape, params.caption.split()[2]
    (torch.Size([9, 3, 32, 32]), 'triangle')
    ```
    """
    params = sample_params(1, seed, **fixed)[0]
    return render_clips([params])[0], params


def parse_caption(text: str) -> dict[str, str]:
    """Read the clip fields named in a prompt: ``{"colour": ..., "shape": ..., ...}``.

    Only fields whose words appear are returned; the first word of each kind wins, except that a
    colour word directly before ``background`` (or before a style word) is the background.

    Example:

    ```py
    >>> from timeripple.demo.clips import parse_caption
    >>> parse_caption("a blue square moving up on a black background")["direction"]
    'up'
    ```
    """
    words = [w for w in "".join(c if c.isalpha() else " " for c in text.lower()).split()]
    out: dict[str, str] = {}
    style_words = {v: k for k, v in STYLES.items() if v}
    for i, word in enumerate(words):
        nxt = words[i + 1] if i + 1 < len(words) else ""
        if word in BACKGROUNDS and (nxt == "background" or nxt in style_words):
            out.setdefault("background", word)
        elif word in COLOURS:
            out.setdefault("colour", word)
        elif word in SHAPES:
            out.setdefault("shape", word)
        elif word in DIRECTIONS:
            out.setdefault("direction", word)
        elif word in SPEEDS:
            out.setdefault("speed", word)
        elif word in style_words:
            out.setdefault("style", style_words[word])
    return out


def with_fields(params: ClipParams, **fields) -> ClipParams:
    """Copy of ``params`` with some fields replaced (values are checked)."""
    for field, value in fields.items():
        if field in _CHOICES:
            _check_choice(field, value)
    return replace(params, **fields)
