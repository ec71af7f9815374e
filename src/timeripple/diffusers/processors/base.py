"""[`TimeRippleAttnProcessor`]: the base of every family's processor.

A family processor subclasses this class and the stock diffusers processor. Its ``__call__`` repeats the
stock projections, norms and RoPE, then calls [`TimeRippleAttnProcessor._attend`] once with
``(B, H, N, D)`` tensors: on a dense step that runs the stock attention call (bit-identical to stock),
otherwise one ``ripple_attention`` call. The processor holds no algorithm.
"""

from __future__ import annotations

import logging
from typing import Callable, Optional

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn

from ..._validation import value_error
from ..parallel import rank_dense_products, ulysses_ripple_attention

logger = logging.getLogger(__name__)

__all__ = ["TimeRippleAttnProcessor"]

_HOW_TO = (
    "install processors with `timeripple.apply_timeripple(pipe, config)`, or with "
    "`pipe.transformer.set_attn_processor(TimeRippleAttnProcessor.for_model(pipe.transformer, config, "
    "scheduler=pipe.scheduler))`, which also registers the hook that supplies the grid and the step"
)


class TimeRippleAttnProcessor:
    r"""
    Attention processor that runs TimeRipple reuse in the self-attention of a video transformer.

    Every layer gets its own instance, bound to the transformer's step/grid context (filled by a
    transformer hook before each forward) and to its layer name (for per-layer statistics). So do not
    build one by hand and share it: get the whole processor dict for the diffusers idiom with
    [`~TimeRippleAttnProcessor.for_model`], or let [`apply_timeripple`] do everything. A processor without
    its context raises a `ValueError` that says how to fix it; it never silently runs dense.

    Example:

    ```py
    >>> from timeripple import TimeRippleAttnProcessor, remove_timeripple
    >>> processors = TimeRippleAttnProcessor.for_model(pipe.transformer, "wan2.1", scheduler=pipe.scheduler)
    >>> pipe.transformer.set_attn_processor(processors)
    >>> video = pipe(prompt, num_inference_steps=50).frames[0]
    >>> remove_timeripple(pipe.transformer)   # original processors and no hook again
    ```
    """

    _attention_backend = None
    _parallel_config = None
    # families whose context-parallel plan keeps the global token order under Ulysses (see parallel.py)
    _supports_context_parallel = False

    def __init__(self, context=None, layer_name: Optional[str] = None, original=None):
        # `original` is the processor this one replaces; only families whose stock processor carries
        # state (Open-Sora-Plan's RoPE) use it
        self.context = context
        self.layer_name = layer_name
        # keep the attention backend chosen with `set_attention_backend(...)` before apply, so dense
        # steps run the same backend as the stock processor did
        backend = getattr(original, "_attention_backend", None)
        if backend is not None:
            self._attention_backend = backend

    def __call__(
        self,
        attn: torch.nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        image_rotary_emb=None,
    ) -> torch.Tensor:
        raise value_error(
            "processor", type(self).__name__, "a bare TimeRippleAttnProcessor has no model family, no layer "
            "name and no step/grid context", _HOW_TO,
        )

    @classmethod
    def for_model(cls, transformer: torch.nn.Module, config, *, scheduler=None) -> dict:
        r"""
        The processor dict for ``transformer.set_attn_processor(...)``, with TimeRipple on self-attention.

        Self-attention layers get a fresh TimeRipple processor each; every other layer keeps its current
        processor object. It also registers the transformer hook that supplies the grid and the step
        (the processors' context) and returns before anything is swapped, so the swap is yours.
        [`remove_timeripple`] undoes both.

        Args:
            transformer (`torch.nn.Module`): a supported transformer (see [`supported_models`]).
            config ([`TimeRippleConfig`] or `str`): the config or a bundled config name.
            scheduler (`SchedulerMixin`): the scheduler that drives the denoising loop (its ``timesteps``
                give the step index).

        Returns:
            `dict[str, AttentionProcessor]`: ``{"<module>.processor": processor}`` for every attention layer.
        """
        from ..apply import processors_for_model

        return processors_for_model(transformer, config, scheduler=scheduler)

    # -- helpers for subclasses -----------------------------------------------------------------------

    def _context(self):
        ctx = self.context
        if ctx is None:
            raise value_error(
                "processor", f"{type(self).__name__}(layer={self.layer_name!r})",
                "this processor was not created for a transformer, so it has no step/grid context", _HOW_TO,
            )
        if not ctx.ready:
            raise value_error(
                "processor", f"{type(self).__name__}(layer={self.layer_name!r})",
                "the step/grid hook has not run for this forward call (it was removed, or the attention "
                "module was called outside `transformer.forward`)", _HOW_TO,
            )
        return ctx

    def _dispatch_dense(self, query, key, value, attn_mask=None) -> Callable[[], torch.Tensor]:
        """The stock call of diffusers' attention dispatcher on ``(B, N, H, D)`` tensors, as a closure
        returning ``(B, H, N, D)`` (the ``dense`` argument of :meth:`_attend`)."""

        def dense():
            out = dispatch_attention_fn(
                query, key, value, attn_mask=attn_mask, dropout_p=0.0, is_causal=False,
                backend=self._attention_backend, parallel_config=self._parallel_config,
            )
            return out.transpose(1, 2)

        return dense

    def _attend(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        *,
        dense: Callable[[], torch.Tensor],
        text_len: int = 0,
        text_position: str = "after",
        attn_mask: Optional[torch.Tensor] = None,
        grid: Optional[tuple] = None,
    ) -> torch.Tensor:
        """Attention on ``(B, H, N, D)``: ``dense()`` (the stock call) on dense steps, else ``ripple_attention``
        (or the context's ``attention_fn``, see ``apply_timeripple``).

        ``grid`` overrides the hook's grid for models that pass it to the attention layer themselves."""
        ctx = self._context()
        B, H, N, D = query.shape  # (B, H, N, D)
        if ctx.attention_kwargs is None:
            out = dense()
            products = B * H * N * key.shape[2] * D
            if self._parallel_config is not None:  # this rank's share of the global call
                products = rank_dense_products(self._parallel_config, B, H, D, ctx.grid if grid is None else grid,
                                               text_len)
            self._record(ctx, 0.0, products)
            return out
        if self._parallel_config is not None:
            if ctx.attention_fn is not None:
                raise value_error(
                    "attention_fn", ctx.attention_fn, "a custom attention callable does not run under context "
                    "parallelism (only ripple_attention is split across ranks)",
                    "evaluate without `enable_parallelism(...)`, or apply TimeRipple without `attention_fn`",
                )
            return self._attend_parallel(ctx, query, key, value, text_len, text_position, attn_mask, grid)
        grid = tuple(ctx.grid if grid is None else grid)
        T, Hg, Wg = grid
        if T * Hg * Wg + text_len != N:
            raise value_error(
                "grid", grid, f"T*H*W + text tokens = {T * Hg * Wg} + {text_len} must equal the sequence "
                f"length {N} of layer {self.layer_name!r}",
                "check that the transformer's input latents match its patch size (under context parallelism, "
                "apply TimeRipple before `enable_parallelism(...)`); report the model if they do",
            )
        if ctx.attention_fn is not None:  # evaluation: another attention on the same reusing steps
            out, stats = ctx.attention_fn(
                query, key, value, grid=grid, text_len=text_len, text_position=text_position, attn_mask=attn_mask,
                attention_kwargs=ctx.attention_kwargs, step=ctx.step, num_steps=ctx.num_steps, layer=self.layer_name,
            )
            self._record(ctx, stats.qk_savings_mean, stats.qk_products)
            return out
        from ...attention import ripple_attention

        out, stats = ripple_attention(
            query, key, value, grid=grid, text_len=text_len, text_position=text_position,
            attn_mask=attn_mask, return_stats=True, **ctx.attention_kwargs,
        )
        self._record(ctx, stats.qk_savings_mean, stats.qk_products)
        return out

    def _attend_parallel(self, ctx, query, key, value, text_len, text_position, attn_mask, grid):
        """A reuse step under context parallelism: Ulysses only, in the all-to-all's ``forward_op``."""
        if not self._supports_context_parallel:
            raise value_error(
                "parallel_config", self._parallel_config, f"{type(self).__name__} does not support context "
                "parallelism (its model's split would not keep the global token order); only Wan does",
                "run this model without `enable_parallelism(...)`, or use TimeRipple on a single device",
            )
        out, stats = ulysses_ripple_attention(
            query, key, value, parallel_config=self._parallel_config, grid=tuple(ctx.grid if grid is None else grid),
            attention_kwargs=ctx.attention_kwargs, text_len=text_len, text_position=text_position,
            attn_mask=attn_mask, layer_name=self.layer_name,
        )
        self._record(ctx, stats.qk_savings_mean, stats.qk_products)
        return out

    @torch.compiler.disable
    def _record(self, ctx, qk_savings: float, qk_products: int) -> None:
        ctx.recorder.add(ctx.step, self.layer_name, qk_savings, qk_products)


def register_like_stock(processor_cls: type, stock_cls: type) -> None:
    """Give ``processor_cls`` the stock class's metadata in diffusers' ``AttentionProcessorRegistry``, so
    layer-skip guidance (``LayerSkipConfig``) still works with TimeRipple installed."""
    try:
        from diffusers.hooks._helpers import AttentionProcessorRegistry
    except ImportError:  # private diffusers API; guidance just will not know the class
        return
    try:
        AttentionProcessorRegistry.register(processor_cls, AttentionProcessorRegistry.get(stock_cls))
    except ValueError:
        logger.debug("%s is not in diffusers' AttentionProcessorRegistry", stock_cls.__name__)
