"""The peer methods in the ``timeripple eval`` registry (see :mod:`timeripple.peers` for what each does).

==============  ===========================================================  ===============================
name            what runs                                                    knob (searched)
==============  ===========================================================  ===============================
``svg``         SVG-style per-head spatial / temporal masks (FlexAttention     sparsity (video pairs skipped)
                on CUDA, masked SDPA elsewhere), on the config's reusing steps
``minference``  MInference-style patterns, the best of three per head          1 - density
``tr-svg``      TimeRipple channel reuse inside SVG-style masks at 70%         TimeRipple threshold scale
                sparsity (the paper's "TR + SVG 70%" row)
``pab``         diffusers PyramidAttentionBroadcast (self-attention, middle    block skip range (int)
                80% of the steps)
``fbc``         diffusers FirstBlockCache                                      threshold
``magcache``    diffusers MagCache, ratios calibrated on the pipeline          threshold
``taylorseer``  diffusers TaylorSeerCache (attention + feed-forward outputs)   cache interval (int)
``delta-dit``   Δ-DiT-style block cache (rear blocks early, front late)        share of blocks cached
``tr+pab``      TimeRipple channel mode with PAB (skip range 2) in one model   TimeRipple threshold scale
``tr+fbc``      TimeRipple channel mode with FirstBlockCache (0.05)            TimeRipple threshold scale
==============  ===========================================================  ===============================

Attention peers run through TimeRipple's processors (``apply_timeripple(..., attention_fn=...)``) on the
base config's reusing steps, so their savings are on the same steps as TimeRipple's; they also get the
tensor-level error. Caches install themselves and count the self-attention q·kᵀ products of the layers
they skip; they have no schedule-dense steps, so every step counts as a reusing step for them (their
"savings on the reusing steps" is the mean over all steps; ``savings_total`` is the whole generation).

Importing this module imports no torch (``timeripple eval --help`` stays cheap). A method that cannot run
on the given pipeline or device raises [`MethodUnavailable`] (a `ValueError`)
with the reason, from ``install`` / ``build``; the harness reports the reason instead of a row of figures.
"""

from __future__ import annotations

import logging
import weakref
from typing import Dict

from .methods import Method, MethodSetup, register_method

logger = logging.getLogger(__name__)

__all__ = ["MethodUnavailable", "PEER_METHODS", "TR_SVG_SPARSITY"]

PEER_METHODS = ("svg", "minference", "tr-svg", "pab", "fbc", "magcache", "taylorseer", "delta-dit", "tr+pab", "tr+fbc")
TR_SVG_SPARSITY = 0.7  # the paper's SVG 70%
PAB_MIDDLE = 0.8  # PAB broadcasts in the middle 80% of the steps (the paper's PAB_5,9 setting)
NUM_SAMPLED = 64
# MagCache ratios per pipeline and step count (calibrated on first use; may be filled by hand)
MAG_RATIOS: "weakref.WeakKeyDictionary[object, Dict[int, list]]" = weakref.WeakKeyDictionary()


def _sampled(grid) -> int:
    """Queries sampled per call: ``NUM_SAMPLED``, at most 1/32 of the video tokens (at least 1)."""
    return max(1, min(NUM_SAMPLED, (grid[0] * grid[1] * grid[2]) // 32))


class MethodUnavailable(ValueError):
    """A peer cannot run on this pipeline or device; the message is the reason shown in the table."""


# -- attention peers (build) -------------------------------------------------------------------------


def _svg(sparsity, config):
    from ..peers import svg_attention

    def attention(q, k, v, *, grid, text_len, text_position, attn_mask, attention_kwargs, step, num_steps, layer):
        return svg_attention(q, k, v, grid=grid, sparsity=float(sparsity), text_len=text_len,
                             text_position=text_position, attn_mask=attn_mask, num_sampled=_sampled(grid),
                             return_stats=True)

    return MethodSetup(config, attention)


def _minference(sparsity, config):
    from ..peers import minference_attention

    def attention(q, k, v, *, grid, text_len, text_position, attn_mask, attention_kwargs, step, num_steps, layer):
        return minference_attention(q, k, v, grid=grid, density=max(1e-4, 1.0 - float(sparsity)), pattern="auto",
                                    text_len=text_len, text_position=text_position, attn_mask=attn_mask,
                                    num_sampled=_sampled(grid), return_stats=True)

    return MethodSetup(config, attention)


def _tr_svg(scale, config):
    from ..peers import ripple_svg_attention

    base = config.replace(mode="channel", budget=None, channel_alpha=None)

    def attention(q, k, v, *, grid, text_len, text_position, attn_mask, attention_kwargs, step, num_steps, layer):
        theta = attention_kwargs["threshold"]
        theta = {a: t * scale for a, t in theta.items()} if isinstance(theta, dict) else theta * scale
        return ripple_svg_attention(q, k, v, grid=grid, threshold=theta, sparsity=TR_SVG_SPARSITY,
                                    text_len=text_len, text_position=text_position, attn_mask=attn_mask,
                                    window=attention_kwargs["window"], axes=attention_kwargs["axes"],
                                    priority=attention_kwargs["priority"], num_sampled=_sampled(grid),
                                    return_stats=True)

    return MethodSetup(base, attention)


# -- caches (install) --------------------------------------------------------------------------------


def _family_or_unavailable(pipe, what: str):
    from ..diffusers.registry import get_family

    transformer = getattr(pipe, "transformer", None)
    if transformer is None or get_family(transformer) is None:
        raise MethodUnavailable(f"{what} needs a transformer of a family TimeRipple supports (to count the "
                                f"self-attention it skips); got {type(transformer).__name__}")
    if not hasattr(transformer, "enable_cache") and what != "delta-dit":
        raise MethodUnavailable(f"{what}: {type(transformer).__name__} has no diffusers `enable_cache`")


def _num_steps(pipe, what: str) -> int:
    timesteps = getattr(getattr(pipe, "scheduler", None), "timesteps", None)
    if timesteps is None or len(timesteps) == 0:
        raise MethodUnavailable(f"{what} needs the step count before the run: call the pipeline once (dense) first")
    return len(timesteps)


def _install_cache(kind: str, integer: bool):
    def install(pipe, knob, config):
        from ..peers import enable_diffusers_cache

        _family_or_unavailable(pipe, kind)
        value = max(2 if kind == "pab" else 1, int(round(knob))) if integer else float(knob)
        extra = {}
        if kind == "magcache":
            n = _num_steps(pipe, kind)
            extra = dict(num_inference_steps=n, mag_ratios=_mag_ratios(pipe, n))
        if kind == "pab":
            if not hasattr(pipe, "current_timestep"):
                raise MethodUnavailable("pab reads `pipe.current_timestep`, which this pipeline does not have")
            extra = dict(timestep_skip_range=_middle_timesteps(pipe, PAB_MIDDLE))
        return enable_diffusers_cache(pipe, kind, value, **extra)

    return install


def _middle_timesteps(pipe, share: float) -> tuple:
    """PAB's open timestep range that holds the middle ``share`` of the scheduler's steps (the paper's PAB
    broadcasts in the middle 80% of the steps)."""
    n = _num_steps(pipe, "pab")
    table = sorted(float(t) for t in pipe.scheduler.timesteps)  # ascending
    skip = round((1 - share) / 2 * n)
    inner = table[skip : n - skip] if n - 2 * skip > 0 else table
    return (inner[0] - 1e-3, inner[-1] + 1e-3)


def _mag_ratios(pipe, n: int) -> list:
    """MagCache ratios of ``pipe`` for ``n`` steps, calibrated once per pipeline on the first eval prompt."""
    import torch

    from ..peers import calibrate_mag_ratios
    from .prompts import DEFAULT_GUIDANCE, EVAL_PROMPTS

    store = MAG_RATIOS.setdefault(pipe, {})
    if n not in store:
        def run():
            kwargs = dict(prompt=EVAL_PROMPTS[0], num_inference_steps=n, output_type="latent",
                          generator=torch.Generator().manual_seed(0))
            if "guidance_scale" in type(pipe).__call__.__code__.co_varnames:
                kwargs["guidance_scale"] = DEFAULT_GUIDANCE
            try:
                pipe(**kwargs)
            except Exception as err:  # e.g. a pipeline without a text encoder cannot take a prompt
                raise MethodUnavailable(f"magcache could not calibrate its ratios by calling the pipeline with a "
                                        f"prompt ({type(err).__name__}: {err}); put them in "
                                        "`timeripple.eval.peer_methods.MAG_RATIOS[pipe][num_steps]`") from err

        store[n] = calibrate_mag_ratios(pipe, run)
        logger.info("MagCache ratios for %d steps: %s", n, [round(r, 4) for r in store[n]])
    return store[n]


def _delta_dit_install(pipe, knob, config):
    from ..peers import apply_delta_dit
    from ..peers.delta_dit import transformer_blocks

    _family_or_unavailable(pipe, "delta-dit")
    n_blocks = len(transformer_blocks(pipe.transformer))
    num = min(n_blocks // 2, max(0, int(round(float(knob) * n_blocks))))
    return apply_delta_dit(pipe, num_blocks=num, interval=2, cutoff=0.5, early="rear")


def _composed_install(kind: str, knob):
    """TimeRipple (channel mode, thresholds scaled by the searched knob) together with diffusers' ``kind``
    cache at a fixed ``knob`` (deliverable 2 of issue 13: the combined trade-off)."""
    def install(pipe, scale, config):
        from ..peers import apply_timeripple_with_cache
        from .methods import scaled

        _family_or_unavailable(pipe, f"tr+{kind}")
        extra = {"timestep_skip_range": _middle_timesteps(pipe, PAB_MIDDLE)} if kind == "pab" else {}
        cfg = scaled(config.replace(mode="channel", budget=None, channel_alpha=None), scale)
        return apply_timeripple_with_cache(pipe, cfg, kind, knob, **extra)

    return install


def _sparsity_guess(target: float, geo) -> float:
    # the pairs skipped are about the sparsity of the video pairs, less the sampled rows
    extra = _sampled(geo.grid) / max(geo.num_tokens, 1)
    return min(0.99, max(0.01, target + extra))


_FRACTION = dict(bounds=(0.0, 0.99), log_knob=False)
for _method in (
    Method("svg", "Sparse-VideoGen-style per-head spatial/temporal masks chosen online (this repo's implementation)",
           knob="sparsity", savings="q·kᵀ products (pairs outside the mask, net of profiling)", build=_svg,
           first_guess=_sparsity_guess, **_FRACTION),
    Method("minference", "MInference-style A-shape / vertical-slash / block-sparse, best per head (this repo's)",
           knob="1 - density", savings="q·kᵀ products (pairs outside the pattern, net of the estimate)",
           build=_minference, first_guess=_sparsity_guess, **_FRACTION),
    Method("tr-svg", f"TimeRipple channel reuse inside SVG-style masks at {TR_SVG_SPARSITY:.0%} sparsity",
           knob="threshold scale", savings="q·kᵀ partial products (mask and reuse together, net of profiling)",
           build=_tr_svg, bounds=(1e-4, 1e3), log_knob=True),
    Method("pab", "diffusers PyramidAttentionBroadcast on self-attention, in the middle 80% of the steps",
           knob="block skip range", savings="self-attention q·kᵀ products of skipped calls",
           install=_install_cache("pab", True), bounds=(2.0, 64.0), log_knob=True, default_knob=2.0,
           integer=True),
    Method("fbc", "diffusers FirstBlockCache", knob="threshold", savings="self-attention q·kᵀ products of skipped blocks",
           install=_install_cache("fbc", False), bounds=(1e-3, 10.0), log_knob=True, default_knob=0.05),
    Method("magcache", "diffusers MagCache (ratios calibrated on one dense run of the pipeline)", knob="threshold",
           savings="self-attention q·kᵀ products of skipped blocks", install=_install_cache("magcache", False),
           bounds=(1e-3, 100.0), log_knob=True, default_knob=0.1),
    Method("taylorseer", "diffusers TaylorSeerCache (attention and feed-forward outputs, order 1)",
           knob="cache interval", savings="self-attention q·kᵀ products of predicted calls",
           install=_install_cache("taylorseer", True), bounds=(1.0, 64.0), log_knob=True, default_knob=2.0,
           integer=True),
    Method("tr+pab", "TimeRipple channel mode together with diffusers PAB (skip range 2, middle 80% of the steps)",
           knob="threshold scale", savings="q·kᵀ partial products over the run (calls PAB skips count whole)",
           install=_composed_install("pab", 2), bounds=(1e-4, 1e3), log_knob=True),
    Method("tr+fbc", "TimeRipple channel mode together with diffusers FirstBlockCache (threshold 0.05)",
           knob="threshold scale", savings="q·kᵀ partial products over the run (blocks FBC skips count whole)",
           install=_composed_install("fbc", 0.05), bounds=(1e-4, 1e3), log_knob=True),
    Method("delta-dit", "Δ-DiT-style block cache: rear blocks early, front blocks late, full step every 2nd",
           knob="share of blocks cached", savings="self-attention q·kᵀ products of skipped blocks",
           install=_delta_dit_install, bounds=(0.0, 0.5), log_knob=False, default_knob=0.25),
):
    register_method(_method, replace=True)
