"""diffusers' own caches (``transformer.enable_cache``), set up from one knob each, with counted savings.

diffusers 0.42.1 ships all four caches the paper's peers and diffusers users reach for:

=============  ==========================================  ========================================
``kind``       config                                       knob (searched to match savings)
=============  ==========================================  ========================================
``"pab"``      ``PyramidAttentionBroadcastConfig``          ``spatial_attention_block_skip_range``
``"fbc"``      ``FirstBlockCacheConfig``                    ``threshold``
``"magcache"`` ``MagCacheConfig`` (ratios calibrated here)  ``threshold``
``"taylorseer"`` ``TaylorSeerCacheConfig``                  ``cache_interval``
=============  ==========================================  ========================================

:func:`enable_diffusers_cache` builds the config, calls ``transformer.enable_cache(config)`` and attaches a
:class:`~timeripple.peers.counting.ComputeCounter`; :meth:`CacheHandle.remove` calls ``disable_cache()``
and takes the counters off. MagCache needs per-model magnitude ratios: :func:`calibrate_mag_ratios`
measures them from one dense generation (``mean ‖r_t‖ / ‖r_{t-1}‖`` of the blocks' total residual, the
formula of MagCache's own calibration mode), without diffusers' printing calibration mode.
"""

from __future__ import annotations

import dataclasses
import logging
import numbers
from typing import Callable, Dict, List, Optional

import torch

from .._validation import type_error, value_error
from ..diffusers.registry import get_family
from .counting import ComputeCounter
from .delta_dit import transformer_blocks

logger = logging.getLogger(__name__)

__all__ = ["CACHE_KINDS", "enable_diffusers_cache", "cache_config", "calibrate_mag_ratios", "CacheHandle"]

CACHE_KINDS = ("pab", "fbc", "magcache", "taylorseer")

# TaylorSeer's default patterns (``^blocks.*attn``) do not match Wan's ``attn1``/``attn2``: cache the
# attention and feed-forward outputs of every block explicitly, per family.
TAYLORSEER_IDENTIFIERS = {
    "wan": [r"blocks\.\d+\.(attn1|attn2|ffn)"],
    "hunyuan_video": [r"transformer_blocks\.\d+\.(attn|ff|ff_context)", r"single_transformer_blocks\.\d+\.attn"],
    "cogvideox": [r"transformer_blocks\.\d+\.(attn1|ff)"],
}


def _transformer(pipe_or_transformer) -> torch.nn.Module:
    if isinstance(pipe_or_transformer, torch.nn.Module):
        return pipe_or_transformer
    transformer = getattr(pipe_or_transformer, "transformer", None)
    if not isinstance(transformer, torch.nn.Module):
        raise type_error("pipe", pipe_or_transformer, "a diffusers pipeline with a `transformer`", "pass `pipe`")
    return transformer


def cache_config(kind: str, knob, *, pipe=None, num_inference_steps: Optional[int] = None,
                 mag_ratios: Optional[List[float]] = None, timestep_skip_range=(100, 800)):
    r"""The diffusers cache config of ``kind`` with its knob set to ``knob``.

    Args:
        kind (`str`): one of :data:`CACHE_KINDS`.
        knob: PAB: block skip range (int >= 2: compute every ``knob``-th call in the timestep range);
            FBC / MagCache: the threshold (float > 0, higher skips more); TaylorSeer: the cache interval
            (int >= 1, higher skips more).
        pipe: the pipeline (PAB reads ``pipe.current_timestep``; TaylorSeer reads the family).
        num_inference_steps (`int`): MagCache's step count.
        mag_ratios (`list[float]`): MagCache's ratios (see :func:`calibrate_mag_ratios`).
        timestep_skip_range (`tuple`, defaults to ``(100, 800)``): PAB's timestep range (diffusers' default).
    """
    from diffusers.hooks import (FirstBlockCacheConfig, MagCacheConfig, PyramidAttentionBroadcastConfig,
                                 TaylorSeerCacheConfig)

    if kind not in CACHE_KINDS:
        raise value_error("kind", kind, f"must be one of {CACHE_KINDS}", "pass e.g. kind='fbc'")
    if kind in ("pab", "taylorseer"):
        low = 2 if kind == "pab" else 1
        if isinstance(knob, bool) or not isinstance(knob, numbers.Integral) or knob < low:
            raise value_error("knob", knob, f"{kind} takes an int >= {low}", f"pass e.g. knob={low + 1}")
    elif isinstance(knob, bool) or not isinstance(knob, numbers.Real) or not knob > 0:
        raise value_error("knob", knob, f"{kind} takes a threshold > 0", "pass e.g. knob=0.05")
    if kind == "pab":
        if pipe is None or not hasattr(pipe, "current_timestep"):
            raise value_error("pipe", pipe, "PAB reads the pipeline's `current_timestep`", "pass pipe=pipe")
        return PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=int(knob), spatial_attention_timestep_skip_range=tuple(timestep_skip_range),
            current_timestep_callback=lambda: pipe.current_timestep,
        )
    if kind == "fbc":
        return FirstBlockCacheConfig(threshold=float(knob))
    if kind == "magcache":
        if mag_ratios is None or num_inference_steps is None:
            raise value_error("mag_ratios", mag_ratios, "MagCache needs the model's magnitude ratios and the step count",
                              "pass mag_ratios=calibrate_mag_ratios(pipe, run) and num_inference_steps=")
        return MagCacheConfig(threshold=float(knob), num_inference_steps=int(num_inference_steps),
                              mag_ratios=list(mag_ratios))
    spec = get_family(_transformer(pipe)) if pipe is not None else None
    identifiers = TAYLORSEER_IDENTIFIERS.get(spec.name if spec is not None else "", None)
    return TaylorSeerCacheConfig(cache_interval=int(knob), disable_cache_before_step=3, max_order=1,
                                 taylor_factors_dtype=torch.float32, cache_identifiers=identifiers)


@dataclasses.dataclass(eq=False)
class CacheHandle:
    """An enabled diffusers cache with its compute counter."""

    kind: str
    config: object
    transformer: torch.nn.Module
    counter: ComputeCounter
    scheduler: object = None

    @property
    def stats(self):
        """Counted self-attention savings of the last generation as a ``GenerationStats`` (every step a
        reusing step; see [`ComputeCounter.generation_stats`])."""
        return self.counter.generation_stats(len(self.scheduler.timesteps), active=self.kind)

    @property
    def attention_savings(self) -> float:
        """Counted share of self-attention q·kᵀ products skipped in the last generation(s) counted."""
        return self.counter.attention_savings

    @property
    def linear_savings(self) -> float:
        """Counted share of the blocks' linear MACs skipped."""
        return self.counter.linear_savings

    def remove(self) -> None:
        self.counter.remove()
        if self.transformer.is_cache_enabled:
            self.transformer.disable_cache()


def enable_diffusers_cache(pipe, kind: str, knob, **config_kwargs) -> CacheHandle:
    r"""``pipe.transformer.enable_cache(cache_config(kind, knob, ...))`` plus a compute counter.

    Raises:
        `ValueError`: the transformer has no ``enable_cache`` (not a diffusers ``CacheMixin``), a cache is
            already enabled, or a bad knob.
    """
    transformer = _transformer(pipe)
    if not hasattr(transformer, "enable_cache"):
        raise value_error("pipe.transformer", type(transformer).__name__, "has no `enable_cache` (diffusers' CacheMixin)",
                          "use a diffusers transformer")
    config = cache_config(kind, knob, pipe=pipe, **config_kwargs)
    transformer.enable_cache(config)
    try:
        counter = ComputeCounter(transformer, scheduler=getattr(pipe, "scheduler", None))
    except BaseException:
        transformer.disable_cache()
        raise
    handle = CacheHandle(kind=kind, config=config, transformer=transformer, counter=counter,
                         scheduler=getattr(pipe, "scheduler", None))
    return handle


def calibrate_mag_ratios(pipe, run: Callable[[], object]) -> List[float]:
    r"""MagCache ratios of ``pipe``'s transformer from one dense generation ``run()``.

    For every forward, the residual ``r = out_last_block - in_first_block`` of the block stack is kept;
    per step, ``ratio_t = mean_tokens ‖r_t‖ / ‖r_{t-1}‖`` (``1.0`` for the first step), on the first
    stream of every step (the conditional one under classifier-free guidance: the pipeline makes
    ``k`` forwards per step, in the same order every step).

    Returns:
        `list[float]`: one ratio per denoising step.
    """
    transformer = _transformer(pipe)
    blocks = transformer_blocks(transformer)
    if not blocks:
        raise value_error("pipe.transformer", type(transformer).__name__, "has no block list", "use a diffusers transformer")
    first, last = blocks[0][1], blocks[-1][1]
    inputs: Dict[str, torch.Tensor] = {}
    residuals: List[torch.Tensor] = []

    def pre(module, args, kwargs):
        inputs["hidden"] = kwargs.get("hidden_states", args[0] if args else None)

    def post(module, args, kwargs, output):
        out = output[0] if isinstance(output, tuple) else output
        hidden = inputs["hidden"]
        residuals.append((out - hidden if out.shape == hidden.shape else out).detach().float())

    handles = [first.register_forward_pre_hook(pre, with_kwargs=True),
               last.register_forward_hook(post, with_kwargs=True)]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    timesteps = getattr(getattr(pipe, "scheduler", None), "timesteps", None)
    steps = 0 if timesteps is None else len(timesteps)
    if not residuals or not steps or len(residuals) % steps:
        raise value_error("run", run, f"made {len(residuals)} transformer forwards, not a multiple of the "
                          f"{steps} scheduler steps", "pass a callable that runs the pipeline once")
    residuals = residuals[:: len(residuals) // steps]  # the first stream of each step (cond under CFG)
    ratios = [1.0]
    for prev, cur in zip(residuals, residuals[1:]):
        ratios.append(float((cur.norm(dim=-1) / (prev.norm(dim=-1) + 1e-8)).mean()))
    return ratios
