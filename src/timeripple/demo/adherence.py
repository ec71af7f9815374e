"""Objective prompt-adherence score for the embedded tiny text-to-video model.

From generated frames alone, find the region of the prompt's colour, then judge three things:

* **colour**: the region exists: at least ``min_pixels`` pixels in at least 3/4 of the frames.
  A pixel belongs to the colour when its nearest shape-palette colour (:data:`clips.COLOURS`) is the
  named one and its RGB distance to it (in ``[0, 1]`` units) is below ``colour_threshold``.
  Only the largest 4-connected component per frame is kept, so stray pixels do not count.
* **shape**: the median over frames of the region's fill ratio = pixels / bounding-box area; an ideal
  circle has pi/4 = 0.785, a square 1, a triangle 1/2. Ratios below ``0.67`` read as triangle,
  ``0.67 - 0.90`` as circle, above as square (boundaries set halfway between the measured ranges on
  300 rendered clips: triangle 0.49-0.64, circle 0.70-0.88, square 0.92-1.0; means 0.54 / 0.79 / 0.99).
* **direction**: the least-squares slope of the region's centroid track gives a displacement over the
  clip; its dominant axis and sign name the direction (image ``y`` grows downwards, so "up" is
  negative ``y``). Displacements under ``min_displacement`` pixels read as "none".
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from .._validation import type_error, value_error
from .clips import COLOURS, ClipParams, parse_caption

logger = logging.getLogger(__name__)

# Fixed (prompt, seed) pairs of the adherence benchmark: 5 per direction, every colour and shape,
# both speeds and all background styles. Never change them: figures are compared across versions.
ADHERENCE_PROMPTS: tuple[tuple[str, int], ...] = (
    ("a red circle moving right quickly on a gray background", 0),
    ("a blue square moving left quickly on a black background", 1),
    ("a yellow triangle moving up quickly on a navy background", 2),
    ("a green circle moving down quickly on a maroon gradient background", 3),
    ("a white square moving right slowly on a teal textured background", 4),
    ("a cyan triangle moving left slowly on a purple background", 5),
    ("a magenta circle moving up slowly on an olive gradient background", 6),
    ("a red square moving down slowly on a navy textured background", 7),
    ("a blue triangle moving right quickly on a maroon background", 8),
    ("a yellow circle moving left quickly on a teal gradient background", 9),
    ("a green square moving up quickly on a gray textured background", 10),
    ("a white triangle moving down quickly on a black gradient background", 11),
    ("a cyan circle moving right slowly on an olive textured background", 12),
    ("a magenta square moving left slowly on a gray gradient background", 13),
    ("a red triangle moving up slowly on a teal background", 14),
    ("a blue circle moving down slowly on a purple textured background", 15),
    ("a yellow square moving right quickly on a purple gradient background", 16),
    ("a green triangle moving left quickly on a navy gradient background", 17),
    ("a white circle moving up quickly on a maroon textured background", 18),
    ("a cyan square moving down quickly on a black background", 19),
)

SHAPE_BOUNDARIES = (0.67, 0.90)  # fill ratio: triangle | circle | square


def _to_unit_frames(frames, value_range) -> torch.Tensor:
    x = torch.as_tensor(frames).detach().to("cpu", torch.float32)
    if x.ndim != 4 or x.shape[1] != 3:
        raise value_error(
            "frames", tuple(x.shape), "must be one video (F, 3, H, W)",
            "pass `out.frames[i]` of the pipeline with output_type='pt', or a clip from demo.clips",
        )
    lo, hi = value_range
    return ((x - lo) / (hi - lo)).clamp(0, 1)


def _largest_component(mask: torch.Tensor) -> torch.Tensor:
    """Keep the largest 4-connected component of each frame of a (F, H, W) bool mask."""
    f, h, w = mask.shape
    labels = torch.arange(1, h * w + 1, dtype=torch.float32).view(1, h, w).expand(f, h, w).clone()
    labels = labels * mask
    kernel_pad = (1, 1, 1, 1)
    for _ in range(h * w):
        padded = F.pad(labels, kernel_pad)
        neighbours = torch.stack(
            [labels, padded[:, :-2, 1:-1], padded[:, 2:, 1:-1], padded[:, 1:-1, :-2], padded[:, 1:-1, 2:]]
        ).amax(0)
        new = neighbours * mask
        if torch.equal(new, labels):
            break
        labels = new
    keep = torch.zeros_like(mask)
    for i in range(f):
        ids, counts = labels[i][mask[i]].unique(return_counts=True)
        if len(ids):
            keep[i] = labels[i] == ids[counts.argmax()]
    return keep


def colour_mask(frames_unit: torch.Tensor, colour: str, threshold: float) -> torch.Tensor:
    """(F, H, W) bool: pixels nearest to palette colour ``colour`` and within ``threshold`` of it."""
    palette = torch.tensor(list(COLOURS.values()))  # (K, 3)
    pixels = frames_unit.permute(0, 2, 3, 1)  # (F, H, W, 3)
    dist = torch.cdist(pixels.reshape(-1, 3), palette).view(*pixels.shape[:3], -1)  # (F, H, W, K)
    k = list(COLOURS).index(colour)
    return (dist.argmin(-1) == k) & (dist[..., k] < threshold)


def _target(prompt_or_params) -> dict[str, str]:
    if isinstance(prompt_or_params, str):
        fields = parse_caption(prompt_or_params)
    elif isinstance(prompt_or_params, ClipParams):
        fields = asdict(prompt_or_params)
    elif isinstance(prompt_or_params, dict):
        fields = dict(prompt_or_params)
    else:
        raise type_error("prompt_or_params", prompt_or_params, "a prompt, a ClipParams or a dict", "pass the prompt")
    if "colour" not in fields:
        raise value_error(
            "prompt_or_params", prompt_or_params, "names no shape colour", f"name one of {list(COLOURS)}"
        )
    return fields


def score_adherence(
    frames,
    prompt_or_params,
    *,
    value_range: tuple[float, float] = (0.0, 1.0),
    colour_threshold: float = 0.35,
    min_pixels: int = 15,
    min_displacement: float = 3.0,
) -> dict[str, Any]:
    """Score one video against its prompt.

    Args:
        frames (`torch.Tensor` or array): one video ``(F, 3, H, W)``.
        prompt_or_params: the prompt (parsed with :func:`clips.parse_caption`), a
            :class:`~timeripple.demo.clips.ClipParams`, or a dict with ``colour`` / ``shape`` / ``direction``.
        value_range (`tuple`, defaults to ``(0, 1)``): the range of ``frames``: ``(0, 1)`` for pipeline
            output ``"pt"``, ``(-1, 1)`` for clips from :mod:`timeripple.demo.clips`.
        colour_threshold (`float`, defaults to 0.35): max RGB distance to the palette colour; lower is
            stricter about hue.
        min_pixels (`int`, defaults to 15): smallest region that counts as present (shapes cover 60-140 px).
        min_displacement (`float`, defaults to 3.0): pixels of net motion below which no direction is read.

    Returns:
        `dict`: ``colour``, ``shape``, ``direction`` (bool each; a criterion the prompt does not name is
        ``None``), ``all`` (every named criterion holds), and the measurements ``pixels`` (median per
        frame), ``fill_ratio``, ``detected_shape``, ``displacement`` ``(dx, dy)``, ``detected_direction``.

    Example:

    ```py
    >>> from timeripple.demo.clips import make_clip
    >>> from timeripple.demo.adherence import score_adherence
    >>> frames, params = make_clip(0, direction="left")
    >>> score_adherence(frames, params, value_range=(-1, 1))["direction"]
    True
    ```
    """
    target = _target(prompt_or_params)
    x = _to_unit_frames(frames, value_range)
    num_frames = x.shape[0]
    mask = _largest_component(colour_mask(x, target["colour"], colour_threshold))
    counts = mask.sum((1, 2)).float()  # (F,)
    present = counts >= min_pixels
    result: dict[str, Any] = {
        "pixels": float(counts.median()), "fill_ratio": None, "detected_shape": None,
        "displacement": None, "detected_direction": None,
    }
    colour_ok = bool(present.float().mean() >= 0.75)
    result["colour"] = colour_ok

    if present.any():
        ratios = []
        ys, xs = torch.meshgrid(torch.arange(x.shape[2]) + 0.5, torch.arange(x.shape[3]) + 0.5, indexing="ij")
        cx, cy, ts = [], [], []
        for t in torch.nonzero(present).flatten().tolist():
            m = mask[t]
            rows, cols = torch.nonzero(m, as_tuple=True)
            box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
            ratios.append(float(counts[t] / box))
            cx.append(float(xs[m].mean()))
            cy.append(float(ys[m].mean()))
            ts.append(float(t))
        fill = float(torch.tensor(ratios).median())
        result["fill_ratio"] = fill
        result["detected_shape"] = (
            "triangle" if fill < SHAPE_BOUNDARIES[0] else "circle" if fill < SHAPE_BOUNDARIES[1] else "square"
        )
        if len(ts) >= 2:
            t = torch.tensor(ts)
            tc = t - t.mean()
            denom = float((tc * tc).sum())
            dx = float((tc * (torch.tensor(cx) - sum(cx) / len(cx))).sum()) / denom * (num_frames - 1)
            dy = float((tc * (torch.tensor(cy) - sum(cy) / len(cy))).sum()) / denom * (num_frames - 1)
            result["displacement"] = (dx, dy)
            if max(abs(dx), abs(dy)) >= min_displacement:
                if abs(dx) >= abs(dy):
                    result["detected_direction"] = "right" if dx > 0 else "left"
                else:
                    result["detected_direction"] = "down" if dy > 0 else "up"

    def judge(field, detected):
        if field not in target:
            return None
        return colour_ok and detected == target[field]

    result["shape"] = judge("shape", result["detected_shape"])
    result["direction"] = judge("direction", result["detected_direction"])
    result["all"] = all(v for v in (result["colour"], result["shape"], result["direction"]) if v is not None)
    return result


def evaluate_adherence(
    pipe,
    prompts: Sequence[tuple[str, int]] = ADHERENCE_PROMPTS,
    *,
    num_inference_steps: int = 25,
    guidance_scale: float = 5.0,
    batch_size: int = 20,
    **pipe_kwargs,
) -> dict[str, Any]:
    """Generate every ``(prompt, seed)`` and score it: the accuracies over the set.

    Seeds drive CPU generators, so the initial noise is the same on every device and batch size.

    Args:
        pipe (`TinyT2VPipeline`): e.g. from :func:`timeripple.demo.load_tiny_pipeline` (TimeRipple
            may be applied to it).
        prompts: ``(prompt, seed)`` pairs; defaults to :data:`ADHERENCE_PROMPTS`.
        num_inference_steps, guidance_scale: sampling settings.
        batch_size (`int`, defaults to 20): videos per pipeline call.
        **pipe_kwargs: forwarded to the pipeline call.

    Returns:
        `dict`: ``colour``, ``shape``, ``direction``, ``all`` (fractions in ``[0, 1]``), ``n`` and
        ``per_prompt`` (list of :func:`score_adherence` results with ``prompt`` and ``seed`` added).
    """
    if not prompts:
        raise value_error("prompts", prompts, "must not be empty", "pass (prompt, seed) pairs")
    rows = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        generators = [torch.Generator().manual_seed(seed) for _, seed in chunk]
        frames = pipe(
            [p for p, _ in chunk], num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
            generator=generators, output_type="pt", **pipe_kwargs,
        ).frames
        for (prompt, seed), video in zip(chunk, frames):
            row = score_adherence(video, prompt)
            row.update(prompt=prompt, seed=seed)
            rows.append(row)
    out = {"n": len(rows), "per_prompt": rows}
    for key in ("colour", "shape", "direction", "all"):
        judged = [r[key] for r in rows if r[key] is not None]
        out[key] = sum(judged) / len(judged) if judged else float("nan")
    logger.info("Adherence over %d prompts: %s", len(rows), {k: out[k] for k in ("colour", "shape", "direction")})
    return out


__all__ = ["ADHERENCE_PROMPTS", "score_adherence", "evaluate_adherence", "colour_mask"]
