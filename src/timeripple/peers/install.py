"""Install a peer attention function in the video self-attention of a diffusers pipeline.

The peer reuses TimeRipple's family processors (Wan, HunyuanVideo, CogVideoX, LTX, Mochi, Open-Sora-Plan):
a subclass per family overrides only ``_attend``, so the stock projections, norms and RoPE are the ones
TimeRipple already checks against diffusers, and dense steps run the stock attention call
(bit-identical to stock). A step/grid hook (TimeRipple's, under its own name) tells the processors the
step; a :class:`PeerSchedule` says which steps are sparse. Savings are counted per call into the same
FLOP-weighted :class:`~timeripple.diffusers.generation_stats.StatsRecorder` as TimeRipple's.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any, Callable, Dict, Optional

import torch
from diffusers.hooks import HookRegistry

from .._validation import type_error, value_error
from ..diffusers import apply as tr_apply
from ..diffusers.hook import RippleContext, TimeRippleHook, forward_signature
from ..diffusers.registry import get_family
from ..diffusers.generation_stats import GenerationStats, StatsRecorder

logger = logging.getLogger(__name__)

__all__ = ["PeerSchedule", "PeerHandle", "install_attention_peer", "PEER_HOOK_NAME"]

PEER_HOOK_NAME = "timeripple_peer"
PEER_ATTR = "_timeripple_peer_handle"


@dataclasses.dataclass
class PeerSchedule:
    r"""Which denoising steps run the peer: steps ``< round(dense_fraction · num_steps)`` and the last
    ``dense_last`` steps are dense (stock), the others get ``kwargs``.

    Args:
        kwargs (`dict`): keyword arguments of the peer attention function on sparse steps.
        dense_fraction (`float`, defaults to 0.0): leading share of dense steps (SVG keeps 12 of 50 dense).
        dense_last (`int`, defaults to 0): trailing dense steps.
        step_kwargs (`Callable[[int, int], dict | None]`, *optional*): overrides the above: returns the
            kwargs of step ``i`` of ``n`` or `None` for a dense step (TimeRipple + SVG follows TimeRipple's
            own threshold schedule this way).
    """

    kwargs: Dict[str, Any] = dataclasses.field(default_factory=dict)
    dense_fraction: float = 0.0
    dense_last: int = 0
    step_kwargs: Optional[Callable[[int, int], Optional[Dict[str, Any]]]] = None
    name: str = "peer"
    model_family: Optional[str] = None

    def __post_init__(self):
        if isinstance(self.dense_fraction, bool) or not 0 <= float(self.dense_fraction) <= 1:
            raise value_error("dense_fraction", self.dense_fraction, "must be in [0, 1]", "pass e.g. 0.24")

    def attention_kwargs(self, step: int, num_steps: int) -> Optional[Dict[str, Any]]:
        """The peer's kwargs at ``step``, or `None` (a dense step). A ``threshold`` entry is always present: the
        stats record it per step as the reusing-step marker (``1.0`` when the peer takes no threshold)."""
        if self.step_kwargs is not None:
            kwargs = self.step_kwargs(step, num_steps)
        elif step < round(self.dense_fraction * num_steps) or step >= num_steps - self.dense_last:
            kwargs = None
        else:
            kwargs = dict(self.kwargs)
        if kwargs is None:
            return None
        return {"threshold": kwargs.get("threshold", 1.0), **kwargs}


@dataclasses.dataclass(eq=False)
class PeerHandle:
    """What :func:`install_attention_peer` changed, its counted statistics, and how to undo it."""

    name: str
    transformers: Dict[str, torch.nn.Module]
    originals: Dict[str, Dict[str, object]]
    recorder: StatsRecorder = dataclasses.field(repr=False)
    had_forward: Dict[str, bool] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def stats(self) -> GenerationStats:
        """Counted q·kᵀ savings of the last generation (per step, per layer, FLOP-weighted total)."""
        return self.recorder.stats()

    def remove(self) -> None:
        """Restore the original processor objects and remove the hook."""
        for name, transformer in self.transformers.items():
            modules = dict(transformer.named_modules())
            for layer, processor in self.originals.get(name, {}).items():
                if layer in modules:
                    tr_apply.set_processor(modules[layer], processor)
            registry = getattr(transformer, "_diffusers_hook", None)
            if registry is not None and registry.get_hook(PEER_HOOK_NAME) is not None:
                registry.remove_hook(PEER_HOOK_NAME, recurse=False)
                if not registry.hooks and not self.had_forward.get(name, True) and "forward" in vars(transformer):
                    del transformer.forward
            if getattr(transformer, PEER_ATTR, None) is self:
                delattr(transformer, PEER_ATTR)


@functools.lru_cache(maxsize=None)
def _peer_class(family_cls: type) -> type:
    """A subclass of ``family_cls`` whose ``_attend`` calls the peer function on sparse steps."""

    def _attend(self, query, key, value, *, dense, text_len=0, text_position="after", attn_mask=None, grid=None):
        ctx = self._context()
        B, H, N, D = query.shape
        if ctx.attention_kwargs is None:
            out = dense()
            self._record(ctx, 0.0, B * H * N * key.shape[2] * D)
            return out
        if self._parallel_config is not None:
            raise value_error("parallel_config", self._parallel_config, "peer methods run on one device only",
                              "run the peer without `enable_parallelism(...)`")
        kwargs = {k: v for k, v in ctx.attention_kwargs.items() if k != "threshold" or self._peer_takes_threshold}
        out, stats = self._peer_fn(query, key, value, grid=tuple(ctx.grid if grid is None else grid),
                                   text_len=text_len, text_position=text_position, attn_mask=attn_mask,
                                   return_stats=True, **kwargs)
        self._record(ctx, stats.qk_savings_mean, stats.qk_products)
        return out

    return type(f"Peer{family_cls.__name__}", (family_cls,), {"_attend": _attend, "_peer_fn": None,
                                                              "_peer_takes_threshold": False})


def install_attention_peer(pipe_or_transformer, attention_fn: Callable, schedule: PeerSchedule, *,
                           takes_threshold: bool = False, scheduler=None) -> PeerHandle:
    r"""Run ``attention_fn`` instead of dense attention in every video self-attention layer on the sparse
    steps of ``schedule``.

    Args:
        pipe_or_transformer: a diffusers pipeline (``transformer`` and ``transformer_2`` are patched) or a
            transformer of a family TimeRipple supports.
        attention_fn (`Callable`): ``fn(q, k, v, *, grid, text_len, text_position, attn_mask, return_stats=True,
            **schedule kwargs) -> (out, stats)`` on ``(B, H, N, D)``, ``stats`` with ``qk_savings_mean`` and
            ``qk_products`` (e.g. :func:`~timeripple.peers.svg_attention`).
        schedule ([`PeerSchedule`]): the sparse steps and the function's kwargs.
        takes_threshold (`bool`, defaults to `False`): pass the scheduled ``threshold`` on to ``attention_fn``.
        scheduler: as for :func:`timeripple.apply_timeripple`.

    Returns:
        [`PeerHandle`]

    Raises:
        `ValueError`: unsupported model, or TimeRipple / another peer already installed (nothing stays
            installed on error).
    """
    if not callable(attention_fn):
        raise type_error("attention_fn", attention_fn, "a callable", "pass e.g. timeripple.peers.svg_attention")
    if not isinstance(schedule, PeerSchedule):
        raise type_error("schedule", schedule, "a PeerSchedule", "pass PeerSchedule(kwargs={...})")
    targets = tr_apply.install_targets(pipe_or_transformer)
    scheduler_fn = tr_apply.scheduler_fn_for(pipe_or_transformer, scheduler)
    for name, transformer in targets:
        if get_family(transformer) is None:
            raise value_error(name, type(transformer).__name__, "is not a model family TimeRipple supports",
                              "use one of timeripple.supported_models()")
        for attr, what in ((tr_apply.HANDLE_ATTR, "TimeRipple"), (PEER_ATTR, "a peer method")):
            if getattr(transformer, attr, None) is not None:
                raise value_error(name, type(transformer).__name__, f"already has {what} installed",
                                  "remove it first (`remove_timeripple(pipe)` / `handle.remove()`)")
    recorder = StatsRecorder()
    handle = PeerHandle(name=schedule.name, transformers={}, originals={}, recorder=recorder)
    try:
        for name, transformer in targets:
            spec = get_family(transformer)
            handle.transformers[name] = transformer
            handle.had_forward[name] = "forward" in vars(transformer)
            context = RippleContext(schedule, recorder, name)
            selected = tr_apply.select_layers(transformer, spec)
            handle.originals[name] = {layer: module.processor for layer, module in selected.items()}
            hook = TimeRippleHook(context, scheduler_fn, spec.grid, forward_signature(transformer))
            HookRegistry.check_if_exists_or_initialize(transformer).register_hook(hook, PEER_HOOK_NAME)
            cls = _peer_class(spec.processor_cls)
            prefix = "" if name == "transformer" else f"{name}."
            for layer, module in selected.items():
                processor = cls(context, prefix + layer, original=module.processor)
                processor._peer_fn = attention_fn
                processor._peer_takes_threshold = takes_threshold
                tr_apply.set_processor(module, processor)
            setattr(transformer, PEER_ATTR, handle)
    except BaseException:
        handle.remove()
        raise
    logger.info("peer %r on %s: %s self-attention layers", schedule.name, ", ".join(handle.transformers),
                sum(len(o) for o in handle.originals.values()))
    return handle
