r"""A Δ-DiT-style block cache (Chen et al., 2024), written here from the paper's description.

Δ-DiT observes that the front blocks of a DiT shape the outline and the rear blocks the details, and
caches accordingly with its Δ-Cache: on a *full* step every block runs and the cache stores, for a range
of consecutive blocks, the change the range makes to its input (``Δ = out_range - in_range``). On the
steps in between, the range is skipped and its output is approximated by ``in_range + Δ``, so the fresh
input of the current step still flows through. The range is the **rear** blocks in the early steps
(``step < cutoff``) and the **front** blocks afterwards (the paper's abstract: "accelerate the rear DiT
blocks in the early sampling stages and the front DiT blocks in the later stages"); ``early="front"``
swaps them, for study. Full steps come every ``interval`` steps, counted from the first step.

Savings are **counted**: the block forwards skipped, as a fraction of all block forwards of the
generation (their self-attention products are skipped with them; blocks of one list cost the same).

The hooks are diffusers ``ModelHook``\ s on the blocks (as diffusers' own FirstBlockCache), keyed by the
pipeline's ``cache_context`` (cond / uncond keep separate caches); the step is counted per context and
``num_steps`` is read from the scheduler. :meth:`DeltaDiTHandle.remove` takes them all off again.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Dict, List, Tuple

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks._common import _ALL_TRANSFORMER_BLOCK_IDENTIFIERS
from diffusers.hooks._helpers import TransformerBlockRegistry
from diffusers.hooks.hooks import BaseState, StateManager

from .._validation import type_error, value_error

logger = logging.getLogger(__name__)

__all__ = ["apply_delta_dit", "DeltaDiTHandle"]

HOOK_NAME = "timeripple_delta_dit"


class _State(BaseState):
    def __init__(self):
        self.step = -1
        self.range_input: Dict[str, object] = {}
        self.delta: Dict[str, Tuple[torch.Tensor, ...]] = {}

    def reset(self):
        self.__init__()


@dataclasses.dataclass
class _Counts:
    computed: int = 0
    skipped: int = 0
    finished: bool = False  # a generation ended: the next one counts afresh


class _DeltaHook(ModelHook):
    _is_stateful = True

    def __init__(self, state_manager, plan, index: int, counts: _Counts, scheduler_fn):
        super().__init__()
        self.state_manager = state_manager
        self.plan = plan  # dict with num_blocks, interval, cutoff, early, ranges
        self.index = index
        self.counts = counts
        self.scheduler_fn = scheduler_fn
        self._metadata = None

    def initialize_hook(self, module):
        self._metadata = TransformerBlockRegistry.get(type(module))
        return module

    def _states(self, args, kwargs) -> Tuple[torch.Tensor, ...]:
        hs = self._metadata._get_parameter_from_args_kwargs(self._metadata.hidden_states_argument_name, args, kwargs)
        if self._metadata.return_encoder_hidden_states_index is None:
            return (hs,)
        ehs = self._metadata._get_parameter_from_args_kwargs("encoder_hidden_states", args, kwargs)
        return (hs, ehs)

    def _pack(self, states: Tuple[torch.Tensor, ...]):
        if len(states) == 1:
            return states[0]
        out = [None] * (max(self._metadata.return_hidden_states_index, self._metadata.return_encoder_hidden_states_index) + 1)
        out[self._metadata.return_hidden_states_index] = states[0]
        out[self._metadata.return_encoder_hidden_states_index] = states[1]
        return tuple(out)

    def _unpack(self, output) -> Tuple[torch.Tensor, ...]:
        if not isinstance(output, tuple):
            return (output,)
        return (output[self._metadata.return_hidden_states_index], output[self._metadata.return_encoder_hidden_states_index])

    def new_forward(self, module, *args, **kwargs):
        try:
            state: _State = self.state_manager.get_state()
        except ValueError as err:
            raise value_error("cache_context", None, "the Δ-DiT cache needs the pipeline's `cache_context` "
                              f"({err})", "call the transformer inside `transformer.cache_context(name)`") from err
        if self.index == 0:
            state.step += 1
            if self.counts.finished:
                self.counts.computed = self.counts.skipped = 0
                self.counts.finished = False
        step, plan = state.step, self.plan
        num_steps = len(self.scheduler_fn().timesteps)
        front, rear = plan["ranges"]
        full = step % plan["interval"] == 0 or step >= num_steps
        early = step < round(plan["cutoff"] * num_steps)
        cached = (rear if early else front) if plan["early"] == "rear" else (front if early else rear)
        key = "front" if cached == front else "rear"
        inputs = self._states(args, kwargs)
        if not full and key in state.delta and cached[0] <= self.index < cached[1]:
            self.counts.skipped += 1
            if self.index == cached[0]:
                return self._pack(tuple(x + d for x, d in zip(inputs, state.delta[key])))
            return self._pack(inputs)
        for name, (lo, hi) in (("front", front), ("rear", rear)):
            if self.index == lo:
                state.range_input[name] = inputs
        output = self.fn_ref.original_forward(*args, **kwargs)
        self.counts.computed += 1
        for name, (lo, hi) in (("front", front), ("rear", rear)):
            if self.index == hi - 1 and name in state.range_input:
                outs = self._unpack(output)
                state.delta[name] = tuple(o - i for o, i in zip(outs, state.range_input.pop(name)))
        return output

    def reset_state(self, module):
        self.state_manager.reset()
        self.counts.finished = True
        return module


@dataclasses.dataclass(eq=False)
class DeltaDiTHandle:
    """The installed Δ-DiT cache: counted block savings of the generation so far, and ``remove()``."""

    blocks: List[torch.nn.Module]
    counts: _Counts
    transformer: torch.nn.Module
    counter: object = None
    scheduler: object = None

    @property
    def attention_savings(self) -> float:
        """Counted share of self-attention q·kᵀ products skipped (with their blocks)."""
        return self.counter.attention_savings

    @property
    def stats(self):
        """Counted self-attention savings of the last generation as a ``GenerationStats``."""
        return self.counter.generation_stats(len(self.scheduler.timesteps), active="delta_dit")

    @property
    def block_savings(self) -> float:
        """Counted: block forwards skipped / all block forwards of the last generation."""
        total = self.counts.computed + self.counts.skipped
        return self.counts.skipped / total if total else 0.0

    def remove(self) -> None:
        if self.counter is not None:
            self.counter.remove()
        for block in self.blocks:
            registry = getattr(block, "_diffusers_hook", None)
            if registry is not None and registry.get_hook(HOOK_NAME) is not None:
                registry.remove_hook(HOOK_NAME, recurse=False)
        root = getattr(self.transformer, "_diffusers_hook", None)
        if root is not None:
            root.invalidate_child_registries_cache()


def transformer_blocks(transformer) -> List[Tuple[str, torch.nn.Module]]:
    found = []
    for name, child in transformer.named_children():
        if name in _ALL_TRANSFORMER_BLOCK_IDENTIFIERS and isinstance(child, torch.nn.ModuleList):
            found += [(f"{name}.{i}", block) for i, block in enumerate(child)]
    return found


def apply_delta_dit(pipe_or_transformer, *, num_blocks: int, interval: int = 2, cutoff: float = 0.5,
                    early: str = "rear", scheduler=None) -> DeltaDiTHandle:
    r"""Install a Δ-DiT-style block cache on a diffusers transformer.

    Args:
        pipe_or_transformer: a pipeline (its ``transformer``) or the transformer itself.
        num_blocks (`int`): blocks in each cached range (front = the first ``num_blocks``, rear = the last).
            More blocks skip more (the knob to match savings); ``0`` caches nothing.
        interval (`int`, defaults to 2): a full step every ``interval`` steps (``1`` = never cache).
        cutoff (`float`, defaults to 0.5): share of the steps that count as "early" (the paper's ``b``).
        early (`str`, defaults to `"rear"`): which range is cached in the early steps (the paper: rear).
        scheduler: the scheduler whose ``timesteps`` give the step count (default ``pipe.scheduler``).

    Returns:
        [`DeltaDiTHandle`]

    Example:

    ```py
    >>> from timeripple.peers import apply_delta_dit
    >>> handle = apply_delta_dit(pipe, num_blocks=2, interval=2)
    >>> video = pipe(prompt).frames[0]
    >>> handle.block_savings, handle.remove()
    ```
    """
    transformer = pipe_or_transformer if isinstance(pipe_or_transformer, torch.nn.Module) else \
        getattr(pipe_or_transformer, "transformer", None)
    if not isinstance(transformer, torch.nn.Module):
        raise type_error("pipe_or_transformer", pipe_or_transformer, "a pipeline or a transformer", "pass `pipe`")
    if scheduler is None:
        scheduler = getattr(pipe_or_transformer, "scheduler", None)
        if scheduler is None:
            raise value_error("scheduler", None, "a bare transformer needs the scheduler", "pass scheduler=pipe.scheduler")
    blocks = transformer_blocks(transformer)
    if not blocks:
        raise value_error("transformer", type(transformer).__name__, "has no transformer block list Δ-DiT can cache",
                          "use a diffusers transformer with `blocks` / `transformer_blocks`")
    for name, block in blocks:
        try:
            TransformerBlockRegistry.get(type(block))
        except ValueError as err:
            raise value_error("transformer", type(transformer).__name__, f"block {name} ({type(block).__name__}) "
                              "is not in diffusers' TransformerBlockRegistry", "use a supported model") from err
    n = len(blocks)
    if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or not 0 <= num_blocks <= n // 2:
        raise value_error("num_blocks", num_blocks, f"must be an int in [0, {n // 2}] (half of the {n} blocks)",
                          "pass e.g. num_blocks=1")
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
        raise value_error("interval", interval, "must be an int >= 1", "pass e.g. interval=2")
    if not 0 <= float(cutoff) <= 1:
        raise value_error("cutoff", cutoff, "must be in [0, 1]", "pass e.g. cutoff=0.5")
    if early not in ("rear", "front"):
        raise value_error("early", early, "must be 'rear' or 'front'", "pass early='rear' (the paper)")
    for _, block in blocks:
        registry = getattr(block, "_diffusers_hook", None)
        if registry is not None and registry.get_hook(HOOK_NAME) is not None:
            raise value_error("transformer", type(transformer).__name__, "already has a Δ-DiT cache",
                              "call `handle.remove()` first")
    plan = {"interval": interval, "cutoff": float(cutoff), "early": early,
            "ranges": ((0, num_blocks), (n - num_blocks, n))}
    from .counting import ComputeCounter

    counts, manager = _Counts(), StateManager(_State)
    installed = []
    handle = DeltaDiTHandle(blocks=installed, counts=counts, transformer=transformer, scheduler=scheduler)
    try:
        for i, (_, block) in enumerate(blocks):
            HookRegistry.check_if_exists_or_initialize(block).register_hook(
                _DeltaHook(manager, plan, i, counts, lambda: scheduler), HOOK_NAME)
            installed.append(block)
        HookRegistry.check_if_exists_or_initialize(transformer).invalidate_child_registries_cache()
        handle.counter = ComputeCounter(transformer, scheduler=scheduler)
    except BaseException:
        handle.remove()
        raise
    return handle
