"""``apply_timeripple`` / ``remove_timeripple`` / ``get_stats``: TimeRipple on a diffusers pipeline.

One verb over a whole model, as diffusers' ``apply_first_block_cache`` and torchao's ``quantize_``:
detect the family from the transformer class (see :mod:`.registry`), give every video self-attention
layer a fresh TimeRipple processor, register one stateful step/grid hook per transformer, and return a
[`TimeRippleHandle`] that knows how to undo all of it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Callable, Dict, List, Tuple

import torch
from diffusers.hooks import HookRegistry

from .._validation import type_error, value_error
from ..config import TimeRippleConfig, load_config
from .hook import HOOK_NAME, RippleContext, TimeRippleHook, forward_signature, make_forward_picklable
from .family import FamilySpec
from .registry import get_family, supported_models
from .generation_stats import GenerationStats, StatsRecorder

logger = logging.getLogger(__name__)

__all__ = ["TimeRippleHandle", "apply_timeripple", "remove_timeripple", "get_stats", "processors_for_model"]

HANDLE_ATTR = "_timeripple_handle"
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
        return any(getattr(t, HANDLE_ATTR, None) is self for t in self.transformers.values())

    def remove(self) -> None:
        """Restore the original processor objects and remove the hooks (see [`remove_timeripple`]).

        Only undoes what is still this handle's: calling it again, or after TimeRipple was applied anew
        with another handle, changes nothing (the newer handle stays active)."""
        for name, transformer in self.transformers.items():
            if getattr(transformer, HANDLE_ATTR, None) is self:
                self._uninstall(name, transformer)

    def _rollback(self) -> None:
        # a failed apply: undo whatever was installed, whether or not the handle attribute was set yet
        for name, transformer in self.transformers.items():
            if getattr(transformer, HANDLE_ATTR, None) in (None, self):
                self._uninstall(name, transformer)

    def _uninstall(self, name: str, transformer: torch.nn.Module) -> None:
        _uninstall(transformer, self.originals.get(name, {}), self._had_forward.get(name, True))
        if getattr(transformer, HANDLE_ATTR, None) is self:
            delattr(transformer, HANDLE_ATTR)


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
    selections = [select_layers(transformer, spec) for _, transformer in targets]  # checks before any change
    recorder = StatsRecorder()
    handle = TimeRippleHandle(config=config, family=spec.name, transformers={}, originals={}, recorder=recorder)
    try:
        for (name, transformer), selected in zip(targets, selections):
            handle.transformers[name] = transformer
            handle._had_forward[name] = "forward" in vars(transformer)
            context = RippleContext(config, recorder, name, attention_fn=attention_fn)
            handle.originals[name] = {layer: module.processor for layer, module in selected.items()}
            _register_hook(transformer, spec, context, scheduler_fn)
            prefix = "" if name == "transformer" else f"{name}."  # Wan 2.2: distinct layer names
            parallel = _context_parallel_config(transformer)
            for layer, module in selected.items():
                processor = spec.processor_cls(context, prefix + layer, original=module.processor)
                if parallel is not None:  # applied after `enable_parallelism`: join it, as its processors did
                    _check_parallel_support(processor, parallel, module, prefix + layer)
                    processor._parallel_config = parallel
                set_processor(module, processor)
                context.installed[layer] = (module, processor)
            setattr(transformer, HANDLE_ATTR, handle)
    except BaseException:
        handle._rollback()
        raise
    logger.info("TimeRipple (%s, config %r) on %s: %s self-attention layers", spec.label, config.name,
                ", ".join(handle.transformers), sum(len(o) for o in handle.originals.values()))
    return handle


def processors_for_model(transformer: torch.nn.Module, config, *, scheduler=None) -> dict:
    r"""
    The processor dict for ``transformer.set_attn_processor(...)`` (the diffusers idiom), with TimeRipple on
    self-attention.

    Self-attention layers get a fresh TimeRipple processor each; every other layer keeps its current
    processor object. It also registers the transformer hook that supplies the grid and the step (the
    processors' context) and returns before anything is swapped, so the swap is yours.
    [`remove_timeripple`] undoes both.

    Args:
        transformer (`torch.nn.Module`): a supported transformer (see [`supported_models`]).
        config ([`TimeRippleConfig`] or `str`): the config or a bundled config name.
        scheduler (`SchedulerMixin`): the scheduler that drives the denoising loop (its ``timesteps``
            give the step index).

    Returns:
        `dict[str, AttentionProcessor]`: ``{"<module>.processor": processor}`` for every attention layer.

    Raises:
        `TypeError`: for a pipeline (pass each transformer); `ValueError`: as [`apply_timeripple`].

    Example:

    ```py
    >>> import timeripple
    >>> processors = timeripple.processors_for_model(pipe.transformer, "wan2.1", scheduler=pipe.scheduler)
    >>> pipe.transformer.set_attn_processor(processors)
    ```
    """
    if not isinstance(transformer, torch.nn.Module):
        names = [n for n in _TRANSFORMER_NAMES if isinstance(getattr(transformer, n, None), torch.nn.Module)]
        raise type_error(
            "transformer", transformer, "a transformer module (processors_for_model builds the processors of one "
            "model)", "pass " + " and ".join(f"`pipe.{n}`" for n in names or ["transformer"]) + " (one call each), "
            "or use `timeripple.apply_timeripple(pipe, config)` for the whole pipeline",
        )
    config, targets, scheduler_fn, spec = _prepare(transformer, config, scheduler)
    (name, transformer), = targets
    if not hasattr(transformer, "attn_processors"):
        raise value_error(
            "transformer", type(transformer).__name__, "has no `set_attn_processor` (diffusers' AttentionMixin)",
            "use `timeripple.apply_timeripple(transformer, config, scheduler=...)` instead",
        )
    recorder = StatsRecorder()
    context = RippleContext(config, recorder, name)
    selected = select_layers(transformer, spec)
    handle = TimeRippleHandle(
        config=config, family=spec.name, transformers={name: transformer},
        originals={name: {layer: module.processor for layer, module in selected.items()}}, recorder=recorder,
        _had_forward={name: "forward" in vars(transformer)},
    )
    processors = dict(transformer.attn_processors)
    for layer, module in selected.items():
        processor = spec.processor_cls(context, layer, original=module.processor)
        processors[f"{layer}.processor"] = processor
        context.installed[layer] = (module, processor)  # the hook checks at every call that they are set
    _register_hook(transformer, spec, context, scheduler_fn)
    setattr(transformer, HANDLE_ATTR, handle)
    return processors


def remove_timeripple(pipe_or_transformer_or_handle) -> None:
    r"""
    Undo [`apply_timeripple`] (or [`processors_for_model`]): the exact original processor
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
    for _, transformer in install_targets(obj):
        handle = getattr(transformer, HANDLE_ATTR, None)
        if handle is not None:
            return handle
    raise value_error(
        "pipe_or_transformer", type(obj).__name__, "TimeRipple is not applied to it",
        "call `timeripple.apply_timeripple(pipe, config)` first",
    )


def install_targets(obj) -> List[Tuple[str, torch.nn.Module]]:
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
    if not isinstance(config, (TimeRippleConfig, str, os.PathLike)):
        raise type_error("config", config, "a TimeRippleConfig, a bundled config name or a path to a YAML file",
                         "pass e.g. 'wan2.1' or timeripple.load_config('wan2.1')")
    config = load_config(config)
    targets = install_targets(obj)
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
        if getattr(transformer, HANDLE_ATTR, None) is not None:
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
    scheduler_fn = scheduler_fn_for(obj, scheduler)
    return config, targets, scheduler_fn, spec


class _FixedScheduler:
    """``scheduler_fn`` for ``scheduler=``: always that scheduler (a class, not a lambda: picklable)."""

    def __init__(self, scheduler):
        self.scheduler = scheduler

    def __call__(self):
        return self.scheduler


class _PipelineScheduler:
    """``scheduler_fn`` for a pipeline: ``pipe.scheduler`` read at every call."""

    def __init__(self, pipe):
        self.pipe = pipe

    def __call__(self):
        return self.pipe.scheduler


def scheduler_fn_for(obj, scheduler) -> Callable[[], object]:
    if scheduler is not None:
        if not hasattr(scheduler, "timesteps"):
            raise type_error("scheduler", scheduler, "a diffusers scheduler (with `timesteps`)",
                             "pass `pipe.scheduler`")
        return _FixedScheduler(scheduler)
    if not isinstance(obj, torch.nn.Module) and hasattr(obj, "scheduler"):
        return _PipelineScheduler(obj)
    raise value_error(
        "scheduler", None, "a bare transformer needs the scheduler whose `timesteps` give the step index",
        "pass `scheduler=pipe.scheduler` (or apply to the pipeline)",
    )


def select_layers(transformer: torch.nn.Module, spec: FamilySpec) -> Dict[str, torch.nn.Module]:
    """The video self-attention layers an installer may replace: ``spec.self_attention_layers`` (at least one),
    each still carrying the family's stock processor (ValueError otherwise)."""
    selected = spec.self_attention_layers(transformer)
    if not selected:
        raise value_error("transformer", type(transformer).__name__,
                          f"has no {spec.label} self-attention layer that TimeRipple understands",
                          "check that the model is a stock diffusers model of this family")
    for name, module in selected.items():
        if not spec.is_stock(module.processor):
            raise value_error(
                f"{name}.processor", type(module.processor).__name__,
                f"TimeRipple replaces the stock {spec.label} processor of each self-attention layer and would "
                "silently bypass this one (a custom or fused processor)",
                "put the stock processor back before applying (after `fuse_qkv_projections()`, call "
                "`unfuse_qkv_projections()`), or leave TimeRipple off for this model",
            )
    return selected


def _register_hook(transformer, spec: FamilySpec, context: RippleContext, scheduler_fn) -> None:
    signature = forward_signature(transformer)
    hook = TimeRippleHook(context, scheduler_fn, spec.grid, signature,
                          supports_context_parallel=spec.processor_cls._supports_context_parallel,
                          strict_steps=isinstance(scheduler_fn, _PipelineScheduler))
    HookRegistry.check_if_exists_or_initialize(transformer).register_hook(hook, HOOK_NAME)
    make_forward_picklable(transformer, hook)


def set_processor(module: torch.nn.Module, processor) -> None:
    if hasattr(module, "set_processor"):
        module.set_processor(processor)
    else:  # MochiAttention: a plain attribute
        module.processor = processor


def _context_parallel_config(transformer):
    """The transformer's `ParallelConfig` if context parallelism is enabled on it, else `None`."""
    parallel = getattr(transformer, "_parallel_config", None)
    return parallel if getattr(parallel, "context_parallel_config", None) is not None else None


def _check_parallel_support(processor, parallel, module, layer: str) -> None:
    from .parallel import check_parallel_config

    if not processor._supports_context_parallel:
        raise value_error(
            "transformer", "context parallelism enabled", f"{type(processor).__name__} does not support context "
            "parallelism; Wan, HunyuanVideo and CogVideoX do", "run this model on one device with TimeRipple",
        )
    check_parallel_config(parallel, heads=module.heads, layer_name=layer)


def _uninstall(transformer: torch.nn.Module, originals: Dict[str, object], had_forward: bool) -> None:
    modules = dict(transformer.named_modules())
    parallel = _context_parallel_config(transformer)
    for layer, processor in originals.items():
        if layer in modules:
            if parallel is not None:  # parallelism was enabled meanwhile: the stock processor must join it
                from .context_parallel import parallel_processor_for

                processor = parallel_processor_for(processor)
                if hasattr(processor, "_parallel_config"):
                    processor._parallel_config = parallel
            set_processor(modules[layer], processor)
    registry = getattr(transformer, "_diffusers_hook", None)
    if registry is not None and registry.get_hook(HOOK_NAME) is not None:
        registry.remove_hook(HOOK_NAME, recurse=False)
        if not registry.hooks and not had_forward and "forward" in vars(transformer):
            del transformer.forward  # back to the class's forward, as before apply
