"""Context-parallel plans for HunyuanVideo and CogVideoX, and [`enable_context_parallel`] for every family.

diffusers 0.42.1 ships a ``_cp_plan`` for Wan but none for HunyuanVideo or CogVideoX, whose text tokens
share the self-attention sequence. The plans here split, at the first block, the video tokens **and** the
text tokens evenly over the ``W`` ranks (and RoPE, which covers the video only, like the video), and gather
the video at ``proj_out``. Rank ``r`` then holds ``[video_r | text_r]`` (HunyuanVideo) or ``[text_r |
video_r]`` (CogVideoX); every per-token layer (norms, modulation, MLPs) runs on it unchanged, and Ulysses
attention gathers ``[video_0 | text_0 | video_1 | text_1 | ...]`` for ``H/W`` heads. Dense attention does
not depend on the key order as long as the key mask follows it, so the stock processors need only two
changes, made by the context-parallel processors below:

* HunyuanVideo builds its ``(B, 1, 1, N)`` padding mask over the global ``[video | text]`` order, after the
  split point; [`HunyuanVideoContextParallelAttnProcessor`] reorders it like the gathered keys.
* CogVideoX's stock processor calls ``F.scaled_dot_product_attention`` directly, so it would attend over
  its local slice only; [`CogVideoXContextParallelAttnProcessor`] routes the call through diffusers'
  ``dispatch_attention_fn`` with the parallel config (and is the stock call without one).

TimeRipple processors do both themselves and run detection in the Ulysses ``forward_op`` on the global
``[video | text]`` order (see ``parallel.py``). Nothing is registered on the diffusers classes: the plans
are passed to ``enable_parallelism(cp_plan=...)`` by [`enable_context_parallel`].
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Optional

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.attention_processor import CogVideoXAttnProcessor2_0
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoAttnProcessor2_0

from .._validation import type_error, value_error
from .hook import forward_signature
from .parallel import check_parallel_config, gathered_mask
from .registry import get_family

logger = logging.getLogger(__name__)

CHECK_HOOK_NAME = "timeripple_context_parallel_check"

__all__ = [
    "CogVideoXContextParallelAttnProcessor",
    "HunyuanVideoContextParallelAttnProcessor",
    "context_parallel_plan",
    "enable_context_parallel",
]


class HunyuanVideoContextParallelAttnProcessor(HunyuanVideoAttnProcessor2_0):
    """HunyuanVideo's stock processor, with the global padding mask reordered like the gathered keys under
    the plan of [`context_parallel_plan`] (see the module docstring). Without a parallel config it is the
    stock processor."""

    _timeripple_stock_stand_in = True  # FamilySpec.is_stock accepts it where the stock processor would be

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        if self._parallel_config is not None and attention_mask is not None and encoder_hidden_states is not None:
            attention_mask = gathered_mask(attention_mask, self._parallel_config, hidden_states.shape[1],
                                           encoder_hidden_states.shape[1], "after")
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)


class CogVideoXContextParallelAttnProcessor(CogVideoXAttnProcessor2_0):
    """CogVideoX's stock processor with the attention call routed through diffusers' dispatcher, so that
    Ulysses context parallelism reaches it. Without a parallel config it is the stock processor."""

    _timeripple_stock_stand_in = True  # FamilySpec.is_stock accepts it where the stock processor would be

    _attention_backend = None
    _parallel_config = None

    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask=None, image_rotary_emb=None):
        if self._parallel_config is None:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        if attention_mask is not None:
            raise value_error(
                "attention_mask", tuple(attention_mask.shape), "CogVideoX passes no attention mask, and a mask "
                "under its context-parallel plan would have to follow the split", "call attn1 without a mask",
            )
        text_len = encoder_hidden_states.size(1)
        hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)  # [text_r | video_r]
        query = attn.to_q(hidden_states).unflatten(2, (attn.heads, -1))  # (B, N/W, H, D)
        key = attn.to_k(hidden_states).unflatten(2, (attn.heads, -1))
        value = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if image_rotary_emb is not None:  # the rank's video slice of RoPE
            query[:, text_len:] = apply_rotary_emb(query[:, text_len:], image_rotary_emb, sequence_dim=1)
            if not attn.is_cross_attention:
                key[:, text_len:] = apply_rotary_emb(key[:, text_len:], image_rotary_emb, sequence_dim=1)
        hidden_states = dispatch_attention_fn(
            query, key, value, dropout_p=0.0, is_causal=False, backend=self._attention_backend,
            parallel_config=self._parallel_config,
        )
        hidden_states = hidden_states.flatten(2, 3).type_as(query)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        encoder_hidden_states, hidden_states = hidden_states.split(
            [text_len, hidden_states.size(1) - text_len], dim=1
        )
        return hidden_states, encoder_hidden_states


def _tokens() -> ContextParallelInput:  # (B, N, C) hidden states
    return ContextParallelInput(split_dim=1, expected_dims=3, split_output=False)


def _rope_rows(split_output: bool) -> ContextParallelInput:  # (N_video, D) cos / sin tables
    return ContextParallelInput(split_dim=0, expected_dims=2, split_output=split_output)


def context_parallel_plan(transformer: torch.nn.Module) -> Optional[dict]:
    r"""
    The context-parallel plan [`enable_context_parallel`] uses for ``transformer``.

    Returns:
        `dict` or `None`: a diffusers ``ContextParallelModelPlan``: for HunyuanVideo, split the RoPE
        tables' rows and the first block's ``hidden_states`` / ``encoder_hidden_states`` (the padding mask
        stays global), gather at ``proj_out``; for CogVideoX, split the rows of the ``image_rotary_emb``
        input and the first block's ``hidden_states`` / ``encoder_hidden_states``, gather at ``proj_out``.
        `None` for Wan, whose diffusers class carries its own ``_cp_plan``.
    """
    family = _family_name(transformer)
    if family == "hunyuan_video":
        first = "transformer_blocks.0" if len(transformer.transformer_blocks) else "single_transformer_blocks.0"
        return {
            "rope": {0: _rope_rows(True), 1: _rope_rows(True)},  # the outputs of the RoPE module
            first: {"hidden_states": _tokens(), "encoder_hidden_states": _tokens()},
            "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
        }
    if family == "cogvideox":
        return {
            # RoPE comes from the pipeline and goes to every block: split it at the model's input
            "": {"image_rotary_emb": [_rope_rows(False), _rope_rows(False)]},
            "transformer_blocks.0": {"hidden_states": _tokens(), "encoder_hidden_states": _tokens()},
            "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
        }
    return None


_STOCK_TO_PARALLEL = {
    HunyuanVideoAttnProcessor2_0: HunyuanVideoContextParallelAttnProcessor,
    CogVideoXAttnProcessor2_0: CogVideoXContextParallelAttnProcessor,
}
_JOINT_FAMILIES = ("hunyuan_video", "cogvideox")
_FAMILIES = ("wan",) + _JOINT_FAMILIES


def parallel_processor_for(processor):
    """The context-parallel processor that stands in for a stock HunyuanVideo / CogVideoX processor (keeping
    its attention backend), or ``processor`` itself."""
    cls = _STOCK_TO_PARALLEL.get(type(processor))
    if cls is None:
        return processor
    replacement = cls()
    backend = getattr(processor, "_attention_backend", None)
    if backend is not None:
        replacement._attention_backend = backend
    return replacement


def _family_name(transformer) -> str:
    spec = get_family(transformer)
    if spec is None or spec.name not in _FAMILIES:
        raise value_error(
            "transformer", type(transformer).__name__, "has no context-parallel plan here; supported: "
            "WanTransformer3DModel, HunyuanVideoTransformer3DModel, CogVideoXTransformer3DModel",
            "run this model on one device, or pass your own `cp_plan` to diffusers' `enable_parallelism`",
        )
    return spec.name


def _context_config(config):
    from diffusers import ContextParallelConfig
    from diffusers.models._modeling_parallel import ParallelConfig

    if isinstance(config, ContextParallelConfig):
        return config
    if isinstance(config, ParallelConfig) and config.context_parallel_config is not None:
        return config.context_parallel_config
    raise type_error(
        "config", config, "a `ContextParallelConfig` (or a `ParallelConfig` holding one)",
        "pass `ContextParallelConfig(ulysses_degree=N)`",
    )


class ContextParallelCheckHook(ModelHook):
    """Checks, before every forward, that the global token counts split evenly over the ranks (diffusers'
    even sharder would fail with a bare ``AssertionError`` inside the first block)."""

    def __init__(self, family, degree: int, grid_fn, signature):
        super().__init__()
        self.family, self.degree, self.grid_fn, self.signature = family, degree, grid_fn, signature

    def pre_forward(self, module, *args, **kwargs):
        self._check(module, args, kwargs)
        return args, kwargs

    @torch.compiler.disable
    def _check(self, module, args, kwargs) -> None:
        bound = self.signature.bind_partial(*args, **kwargs).arguments
        grid = tuple(int(g) for g in self.grid_fn(module, bound))
        video = math.prod(grid)
        text = bound["encoder_hidden_states"].shape[1] if self.family in _JOINT_FAMILIES else 0
        for what, count in (("video tokens", video), ("text tokens", text)):
            if count % self.degree:
                raise value_error(
                    "ContextParallelConfig", f"{self.degree} ranks", f"the {what} ({count}, grid {grid}) must "
                    f"split evenly over the ranks: every rank holds the same share of the video and of the text",
                    f"pick a degree that divides {count}, or change the resolution / frames (text: the pipeline's "
                    "`max_sequence_length`)",
                )


def _check_config(transformer, family: str, cp, degree: int) -> None:
    heads = transformer.config.num_attention_heads
    if family in _JOINT_FAMILIES:
        if cp.ring_degree > 1:
            raise value_error(
                "ContextParallelConfig.ring_degree", cp.ring_degree, f"the {family} plan supports Ulysses only "
                "(diffusers' ring template hands each key chunk the same local key mask, and no CPU backend "
                "returns the log-sum-exp ring needs, so ring is untested here)", "use `ulysses_degree=N`",
            )
        if cp.ulysses_anything:
            raise value_error(
                "ContextParallelConfig.ulysses_anything", True, f"the {family} plan splits the video and the text "
                "evenly (uneven splits would give the ranks text slices of different lengths)",
                "leave `ulysses_anything=False` and pick a degree that divides the token counts",
            )
    if heads % cp.ulysses_degree and not cp.ulysses_anything:
        raise value_error(
            "ContextParallelConfig.ulysses_degree", cp.ulysses_degree, f"must divide the number of attention "
            f"heads ({heads}): Ulysses gives every rank heads / ulysses_degree heads", f"pick a divisor of {heads}",
        )
    if family == "hunyuan_video" and transformer.config.image_condition_type == "token_replace":
        raise value_error(
            "transformer.config.image_condition_type", "token_replace", "HunyuanVideo I2V's first-frame token "
            "replacement addresses global token positions, which the split moves to other ranks",
            "run HunyuanVideo I2V (token_replace) on one device",
        )


@contextlib.contextmanager
def _cpu_ranks_supported():
    """diffusers 0.42.1 picks the rank's device as ``rank % torch.accelerator.device_count()``, which divides
    by zero on a machine without an accelerator (CPU ranks over gloo). For the duration of the call only,
    report one device there, so the rank's device is ``cpu``; with an accelerator nothing changes."""
    if torch.accelerator.device_count() > 0:
        yield
        return
    original = torch.accelerator.device_count
    torch.accelerator.device_count = lambda: 1
    try:
        yield
    finally:
        torch.accelerator.device_count = original


def enable_context_parallel(transformer: torch.nn.Module, config) -> None:
    r"""
    Turn on context parallelism for a Wan, HunyuanVideo or CogVideoX transformer, stock or with TimeRipple.

    Checks the config against the model, puts context-parallel processors in place of stock HunyuanVideo /
    CogVideoX self-attention processors (TimeRipple's handle parallelism themselves), registers a hook that
    checks the token counts before every forward, and calls diffusers' ``transformer.enable_parallelism``
    with the family's plan ([`context_parallel_plan`]; Wan: its own ``_cp_plan``). Apply TimeRipple before
    or after it. ``torch.distributed`` must be initialised (``torchrun``); CPU ranks over gloo work too.
    Nothing is changed on the diffusers classes, and on error the transformer is left as it was.

    Args:
        transformer (`torch.nn.Module`): a ``WanTransformer3DModel``, ``HunyuanVideoTransformer3DModel`` or
            ``CogVideoXTransformer3DModel`` (for Wan 2.2, call it on both transformers).
        config (`ContextParallelConfig` or `ParallelConfig`): ``ContextParallelConfig(ulysses_degree=N)``.
            Ring attention works stock for Wan only (diffusers' own plan); TimeRipple supports Ulysses only.

    Raises:
        `ValueError`: a model without a plan; ring or ``ulysses_anything`` for HunyuanVideo / CogVideoX; a
            degree that does not divide the heads; ring with TimeRipple; HunyuanVideo I2V; a layer whose
            processor cannot run context-parallel attention. Before every forward: token counts the degree
            does not divide.

    Example:

    ```py
    >>> # torchrun --nproc-per-node 2 run.py
    >>> dist.init_process_group("nccl"); torch.cuda.set_device(dist.get_rank())
    >>> timeripple.apply_timeripple(pipe, "hunyuan_video")          # optional; before or after
    >>> enable_context_parallel(pipe.transformer, ContextParallelConfig(ulysses_degree=2))
    >>> video = pipe(prompt, num_inference_steps=50).frames[0]      # same video on every rank
    ```
    """
    from .processors.base import TimeRippleAttnProcessor

    family = _family_name(transformer)
    cp = _context_config(config)
    degree = cp.ring_degree * cp.ulysses_degree
    uneven = cp.ulysses_anything or cp.ring_anything  # Wan only: diffusers splits unevenly then
    _check_config(transformer, family, cp, degree)
    spec = get_family(transformer)
    swapped = {}
    for name, module in transformer.named_modules():
        selected = isinstance(module, spec.attention_types) and hasattr(module, "processor")
        if not (selected and spec.select(name, module)):
            continue
        processor = module.processor
        if isinstance(processor, TimeRippleAttnProcessor):
            check_parallel_config(cp, heads=module.heads, layer_name=name)
        elif family in _JOINT_FAMILIES:
            replacement = parallel_processor_for(processor)
            if replacement is processor and type(processor) not in _STOCK_TO_PARALLEL.values():
                raise value_error(
                    f"{name}.processor", type(processor).__name__, "this processor does not run context-parallel "
                    "attention (it would attend over the rank's slice only)",
                    f"use the stock {family} processor (e.g. `unfuse_qkv_projections()`) or TimeRipple",
                )
            swapped[name] = (module, processor, replacement)
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    if registry.get_hook(CHECK_HOOK_NAME) is not None:
        raise value_error("transformer", type(transformer).__name__, "context parallelism is already enabled",
                          "call `enable_context_parallel` once per transformer")
    try:
        for module, _, replacement in swapped.values():
            module.processor = replacement
        registry.register_hook(
            ContextParallelCheckHook(family, 1 if uneven else degree, spec.grid, forward_signature(transformer)),
            CHECK_HOOK_NAME,
        )
        with _cpu_ranks_supported():
            transformer.enable_parallelism(config=config, cp_plan=context_parallel_plan(transformer))
    except BaseException:
        for module, processor, _ in swapped.values():
            module.processor = processor
        if registry.get_hook(CHECK_HOOK_NAME) is not None:
            registry.remove_hook(CHECK_HOOK_NAME, recurse=False)
        raise
    logger.info("context parallelism (%s, %d ranks) on %s", family, degree, type(transformer).__name__)
