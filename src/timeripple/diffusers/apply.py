"""``apply_timeripple`` / ``remove_timeripple`` / ``get_stats``: TimeRipple on a diffusers pipeline.

One verb over a whole model, as diffusers' ``apply_first_block_cache`` and torchao's ``quantize_``:
detect the family from the transformer class (see :mod:`.registry`), give every video self-attention
layer a fresh TimeRipple processor, register one stateful step/grid hook per transformer, and return a
[`TimeRippleHandle`] that knows how to undo all of it.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Dict, List, Tuple

import torch
from diffusers.hooks import HookRegistry

from .._validation import type_error, value_error
from ..config import TimeRippleConfig, load_config
from .hook import HOOK_NAME, RippleContext, TimeRippleHook, forward_signature
from .registry import FamilySpec, get_family, supported_models
from .stats import GenerationStats, StatsRecorder

logger = logging.getLogger(__name__)

__all__ = ["TimeRippleHandle", "apply_timeripple", "remove_timeripple", "get_stats", "processors_for_model"]

_HANDLE_ATTR = "_timeripple_handle"
_TRANSFORMER_NAMES = ("transformer", "transformer_2")


@dataclasses.dataclass(eq=False)
class TimeRippleHandle:
    r"""
    What [`apply_timeripple`] installed: the config, the patched transformers, the original processors
    and the statistics of the last generation.

    Example:

    ```py
    >>> handle = timeripple.apply_timeripple(pipe, "wan2.1")
    >>> video = pipe(prompt).frames[0]
    >>> print(handle.stats)   # same as timeripple.get_stats(pipe)
    >>> handle.remove()       # same as timeripple.remove_timeripple(pipe)
    ```
    """

    config: TimeRippleConfig
    family: str
    transformers: Dict[str, torch.nn.Module]
    originals: Dict[str, Dict[str, object]]
    recorder: StatsRecorder = dataclasses.field(repr=False)
    _had_forward: Dict[str, bool] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def stats(self) -> GenerationStats:
        """[`GenerationStats`] of the last (or current) generation."""
        return self.recorder.stats()

    @property
    def active(self) -> bool:
        return any(getattr(t, _HANDLE_ATTR, None) is self for t in self.transformers.values())

    def remove(self) -> None:
        """Restore the original processor objects and remove the hooks (see [`remove_timeripple`])."""
        for name, transformer in self.transformers.items():
            _uninstall(transformer, self.originals.get(name, {}), self._had_forward.get(name, True))
            if getattr(transformer, _HANDLE_ATTR, None) is self:
                delattr(transformer, _HANDLE_ATTR)


def apply_timeripple(pipe_or_transformer, config, *, scheduler=None, attention_fn=None) -> TimeRippleHandle:
    r"""
    Turn on TimeRipple attention reuse in a diffusers video pipeline or transformer.

    Only video self-attention layers are swapped; cross-attention, HunyuanVideo's text refiner and every
    layer the family does not know stay stock. On dense steps of the schedule (``config.threshold_at``
    is `None`) the output is bit-identical to stock.

    Args:
        pipe_or_transformer (`DiffusionPipeline` or `torch.nn.Module`): a pipeline (its ``transformer``
            and, for Wan 2.2, ``transformer_2`` are patched) or a transformer.
        config ([`TimeRippleConfig`] or `str`): the config, or a bundled name such as ``"wan2.1"``.
            A config tuned for another family logs a warning and still runs.
        scheduler (`SchedulerMixin`, *optional*): the scheduler whose ``timesteps`` give the step
            index. Defaults to ``pipe.scheduler`` (read at every call); required for a bare transformer.
        attention_fn (`Callable`, *optional*): for evaluation and research (``timeripple eval`` uses it to
            run baselines on the same layers and steps): on every reusing step it replaces
            ``ripple_attention`` and is called as ``attention_fn(q, k, v, *, grid, text_len, text_position,
            attn_mask, attention_kwargs, step, num_steps, layer)`` with ``(B, H, N, D)`` tensors (post-norm,
            post-RoPE) and the step's ``config.attention_kwargs``; it returns ``(out (B, H, N, D),
            RippleStats)``, whose counted savings the statistics record. Dense steps stay stock.

    Returns:
        [`TimeRippleHandle`]: to read statistics and to undo.

    Raises:
        `ValueError`: unsupported model (the message lists the supported ones), TimeRipple already
            applied, or a bare transformer without ``scheduler``. Nothing stays installed on error.

    Example:

    ```py
    >>> import timeripple
    >>> handle = timeripple.apply_timeripple(pipe, "wan2.1")
    >>> video = pipe(prompt, num_inference_steps=50).frames[0]
    >>> print(timeripple.get_stats(pipe))
    >>> timeripple.remove_timeripple(pipe)
    ```
    """
    config, targets, scheduler_fn, spec = _prepare(pipe_or_transformer, config, scheduler)
    if attention_fn is not None and not callable(attention_fn):
        raise type_error("attention_fn", attention_fn, "a callable or None",
                         "pass a function with ripple_attention's keyword contract (see the docstring)")
    recorder = StatsRecorder()
    handle = TimeRippleHandle(config=config, family=spec.name, transformers={}, originals={}, recorder=recorder)
    try:
        for name, transformer in targets:
            handle.transformers[name] = transformer
            handle._had_forward[name] = "forward" in vars(transformer)
            context = RippleContext(config, recorder, name, attention_fn=attention_fn)
            selected = _select_layers(transformer, spec)
            handle.originals[name] = {layer: module.processor for layer, module in selected.items()}
            _register_hook(transformer, spec, context, scheduler_fn)
            prefix = "" if name == "transformer" else f"{name}."  # Wan 2.2: distinct layer names
            for layer, module in selected.items():
                _set_processor(module, spec.processor_cls(context, prefix + layer, original=module.processor))
            setattr(transformer, _HANDLE_ATTR, handle)
    except BaseException:
        handle.remove()
        raise
    logger.info("TimeRipple (%s, config %r) on %s: %s self-attention layers", spec.label, config.name,
                ", ".join(handle.transformers), sum(len(o) for o in handle.originals.values()))
    return handle


def processors_for_model(transformer: torch.nn.Module, config, *, scheduler=None) -> dict:
    """Backs [`TimeRippleAttnProcessor.for_model`]: registers the hook and returns the processor dict."""
    config, targets, scheduler_fn, spec = _prepare(transformer, config, scheduler)
    (name, transformer), = targets
    if not hasattr(transformer, "attn_processors"):
        raise value_error(
            "transformer", type(transformer).__name__, "has no `set_attn_processor` (diffusers' AttentionMixin)",
            "use `timeripple.apply_timeripple(transformer, config, scheduler=...)` instead",
        )
    recorder = StatsRecorder()
    context = RippleContext(config, recorder, name)
    selected = _select_layers(transformer, spec)
    handle = TimeRippleHandle(
        config=config, family=spec.name, transformers={name: transformer},
        originals={name: {layer: module.processor for layer, module in selected.items()}}, recorder=recorder,
        _had_forward={name: "forward" in vars(transformer)},
    )
    processors = dict(transformer.attn_processors)
    for layer, module in selected.items():
        processors[f"{layer}.processor"] = spec.processor_cls(context, layer, original=module.processor)
    _register_hook(transformer, spec, context, scheduler_fn)
    setattr(transformer, _HANDLE_ATTR, handle)
    return processors


def remove_timeripple(pipe_or_transformer_or_handle) -> None:
    r"""
    Undo [`apply_timeripple`] (or [`TimeRippleAttnProcessor.for_model`]): the exact original processor
    objects come back and the hook is removed, so outputs are bit-identical to stock again.

    Args:
        pipe_or_transformer_or_handle: the pipeline, a patched transformer, or the [`TimeRippleHandle`].

    Example:

    ```py
    >>> timeripple.remove_timeripple(pipe)
    ```
    """
    handle = _find_handle(pipe_or_transformer_or_handle)
    handle.remove()


def get_stats(pipe_or_transformer_or_handle) -> GenerationStats:
    r"""
    Counted savings of the last generation (per step, per layer, FLOP-weighted total, thresholds).

    Statistics reset at the start of every pipeline call and stay readable after it.

    Example:

    ```py
    >>> stats = timeripple.get_stats(pipe)
    >>> print(stats.summary()); stats.to_dict()["total_savings"]
    ```
    """
    return _find_handle(pipe_or_transformer_or_handle).stats


# -- helpers ---------------------------------------------------------------------------------------------


def _find_handle(obj) -> TimeRippleHandle:
    if isinstance(obj, TimeRippleHandle):
        return obj
    for _, transformer in _targets(obj):
        handle = getattr(transformer, _HANDLE_ATTR, None)
        if handle is not None:
            return handle
    raise value_error(
        "pipe_or_transformer", type(obj).__name__, "TimeRipple is not applied to it",
        "call `timeripple.apply_timeripple(pipe, config)` first",
    )


def _targets(obj) -> List[Tuple[str, torch.nn.Module]]:
    if isinstance(obj, torch.nn.Module):
        return [("transformer", getattr(obj, "_orig_mod", obj))]
    found = [(n, getattr(obj, n)) for n in _TRANSFORMER_NAMES if isinstance(getattr(obj, n, None), torch.nn.Module)]
    if not found:
        raise type_error(
            "pipe_or_transformer", obj, "a diffusers pipeline with a `transformer` or a transformer module",
            "pass `pipe` or `pipe.transformer`",
        )
    return [(n, getattr(t, "_orig_mod", t)) for n, t in found]


def _prepare(obj, config, scheduler):
    if not isinstance(config, (TimeRippleConfig, str)):
        raise type_error("config", config, "a TimeRippleConfig or a bundled config name",
                         "pass e.g. 'wan2.1' or timeripple.load_config('wan2.1')")
    config = load_config(config)
    targets = _targets(obj)
    specs = []
    for name, transformer in targets:
        spec = get_family(transformer)
        if spec is None:
            listed = ", ".join(f"{cls} ({fam})" for cls, fam in supported_models().items())
            raise value_error(
                f"pipe.{name}" if not isinstance(obj, torch.nn.Module) else "transformer",
                type(transformer).__name__, f"is not a supported model; supported: {listed}",
                "use a supported model, or register yours with `timeripple.diffusers.register_model(cls, family)`",
            )
        if getattr(transformer, _HANDLE_ATTR, None) is not None:
            raise value_error(
                name, type(transformer).__name__, "already has TimeRipple applied",
                "call `timeripple.remove_timeripple(...)` first, then apply again",
            )
        specs.append(spec)
    spec = specs[0]
    if config.model_family is not None and config.model_family != spec.name:
        logger.warning(
            "TimeRipple config %r was tuned for %r but the model is %s; running it anyway. Its thresholds "
            "may reuse too much or too little: consider `timeripple calibrate`.",
            config.name, config.model_family, spec.label,
        )
    scheduler_fn = _scheduler_fn(obj, scheduler)
    return config, targets, scheduler_fn, spec


def _scheduler_fn(obj, scheduler) -> Callable[[], object]:
    if scheduler is not None:
        if not hasattr(scheduler, "timesteps"):
            raise type_error("scheduler", scheduler, "a diffusers scheduler (with `timesteps`)",
                             "pass `pipe.scheduler`")
        return lambda: scheduler
    if not isinstance(obj, torch.nn.Module) and hasattr(obj, "scheduler"):
        return lambda: obj.scheduler
    raise value_error(
        "scheduler", None, "a bare transformer needs the scheduler whose `timesteps` give the step index",
        "pass `scheduler=pipe.scheduler` (or apply to the pipeline)",
    )


def _select_layers(transformer: torch.nn.Module, spec: FamilySpec) -> Dict[str, torch.nn.Module]:
    selected = {
        name: module for name, module in transformer.named_modules()
        if isinstance(module, spec.attention_types) and hasattr(module, "processor") and spec.select(name, module)
    }
    if not selected:
        raise value_error("transformer", type(transformer).__name__,
                          f"has no {spec.label} self-attention layer that TimeRipple understands",
                          "check that the model is a stock diffusers model of this family")
    return selected


def _register_hook(transformer, spec: FamilySpec, context: RippleContext, scheduler_fn) -> None:
    signature = forward_signature(transformer)
    hook = TimeRippleHook(context, scheduler_fn, spec.grid, signature)
    HookRegistry.check_if_exists_or_initialize(transformer).register_hook(hook, HOOK_NAME)


def _set_processor(module: torch.nn.Module, processor) -> None:
    if hasattr(module, "set_processor"):
        module.set_processor(processor)
    else:  # MochiAttention: a plain attribute
        module.processor = processor


def _uninstall(transformer: torch.nn.Module, originals: Dict[str, object], had_forward: bool) -> None:
    modules = dict(transformer.named_modules())
    for layer, processor in originals.items():
        if layer in modules:
            _set_processor(modules[layer], processor)
    registry = getattr(transformer, "_diffusers_hook", None)
    if registry is not None and registry.get_hook(HOOK_NAME) is not None:
        registry.remove_hook(HOOK_NAME, recurse=False)
        if not registry.hooks and not had_forward and "forward" in vars(transformer):
            del transformer.forward  # back to the class's forward, as before apply
