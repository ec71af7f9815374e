"""Count the work a cached transformer actually does, with plain PyTorch forward hooks.

Caches skip work by not calling modules, so the work done is counted where it happens:

* **self-attention products**: every call of a video self-attention layer's query projection (``to_q``,
  which runs iff the layer's attention is computed) adds ``B · N² · inner_dim`` q·kᵀ products;
* **linear MACs**: every ``nn.Linear`` call inside the transformer blocks adds
  ``tokens · in_features · out_features`` multiply-accumulates (the blocks' projections and MLPs).

Savings are relative to a full forward: the first forward of a generation is full for every cache here
(no cache exists yet), so ``savings = 1 - counted / (forwards · first forward's count)``. With a
``scheduler``, the counts restart at the first forward of every generation (the scheduler's first
timestep after a later one). All figures are **counted**, never timed.
"""

from __future__ import annotations

import dataclasses
from typing import List

import torch

from ..diffusers.registry import get_family
from ..diffusers.generation_stats import GenerationStats

__all__ = ["ComputeCounter"]


@dataclasses.dataclass
class _Totals:
    forwards: int = 0
    attn_products: float = 0.0
    linear_macs: float = 0.0
    first_attn: float = 0.0
    first_linear: float = 0.0
    per_forward_attn: List[float] = dataclasses.field(default_factory=list)


class ComputeCounter:
    r"""Forward hooks that count computed self-attention products and block linear MACs of a transformer.

    Args:
        transformer (`torch.nn.Module`): a transformer of a family TimeRipple supports (its video
            self-attention layers are found the same way).

    Example:

    ```py
    >>> counter = ComputeCounter(pipe.transformer)
    >>> video = pipe(prompt).frames[0]
    >>> counter.attention_savings, counter.linear_savings
    >>> counter.remove()
    ```
    """

    def __init__(self, transformer: torch.nn.Module, scheduler=None):
        self.totals = _Totals()
        self.scheduler = scheduler
        self._past_first_step = False
        self._handles: List = []
        self._in_first = False
        spec = get_family(transformer)
        layers = spec.self_attention_layers(transformer) if spec is not None else {}
        for module in layers.values():
            proj = getattr(module, "to_q", None)
            if isinstance(proj, torch.nn.Linear):
                self._handles.append(proj.register_forward_hook(self._count_attention))
        self._handles.append(transformer.register_forward_pre_hook(self._begin_forward, with_kwargs=True))
        self._handles.append(transformer.register_forward_hook(self._end_forward))
        for name, module in transformer.named_modules():
            if isinstance(module, torch.nn.Linear) and "blocks." in name:
                self._handles.append(module.register_forward_hook(self._count_linear))

    def _begin_forward(self, module, args, kwargs):
        at_first = self._at_first_step(kwargs.get("timestep"))
        if at_first and self._past_first_step:  # a new generation: count it afresh
            self.reset()
        self._past_first_step = at_first is False
        self.totals.forwards += 1
        self.totals.per_forward_attn.append(0.0)
        self._in_first = self.totals.forwards == 1

    def _at_first_step(self, timestep):
        """Whether ``timestep`` is the scheduler's first (`None` when unknown: then counts never reset)."""
        timesteps = getattr(self.scheduler, "timesteps", None)
        if timestep is None or timesteps is None or len(timesteps) == 0:
            return None
        table = torch.as_tensor(timesteps).detach().cpu()
        t = torch.as_tensor(timestep).detach().reshape(-1)[:1].cpu().to(table.dtype)
        return bool(t == table[:1])

    def _end_forward(self, module, args, output):
        self._in_first = False

    def _count_attention(self, module, args, output):
        x = args[0]
        n = x.shape[-2]
        products = float(x.numel() // x.shape[-1]) * n * module.out_features
        self.totals.attn_products += products
        if self.totals.per_forward_attn:
            self.totals.per_forward_attn[-1] += products
        if self._in_first:
            self.totals.first_attn += products

    def _count_linear(self, module, args, output):
        macs = float(args[0].numel()) * module.out_features
        self.totals.linear_macs += macs
        if self._in_first:
            self.totals.first_linear += macs

    def reset(self) -> None:
        """Start counting a new generation."""
        self.totals = _Totals()

    @staticmethod
    def _savings(done: float, first: float, forwards: int) -> float:
        full = first * forwards
        return 1.0 - done / full if full else 0.0

    @property
    def attention_savings(self) -> float:
        """Counted: share of the full self-attention q·kᵀ products not computed."""
        t = self.totals
        return self._savings(t.attn_products, t.first_attn, t.forwards)

    @property
    def linear_savings(self) -> float:
        """Counted: share of the blocks' full linear-layer MACs not computed."""
        t = self.totals
        return self._savings(t.linear_macs, t.first_linear, t.forwards)

    def generation_stats(self, num_steps: int, active=1.0) -> GenerationStats:
        r"""The counted self-attention savings as a [`GenerationStats`]: forwards are grouped into
        ``num_steps`` equal steps (``k`` forwards per step, in order); every step is marked as a reusing
        step (``thresholds[i] = active``), since a cache has no schedule-dense steps."""
        t = self.totals
        n = int(num_steps)
        if n <= 0 or t.forwards == 0 or t.forwards % n:
            return GenerationStats(num_steps=n, thresholds=[active] * n, step_savings=[0.0] * n)
        k = t.forwards // n
        per_step = [sum(t.per_forward_attn[i * k:(i + 1) * k]) for i in range(n)]
        full = t.first_attn * k
        steps = [1.0 - done / full if full else 0.0 for done in per_step]
        return GenerationStats(
            num_steps=n, thresholds=[active] * n, step_savings=steps, total_savings=self.attention_savings,
            qk_products=int(t.first_attn * t.forwards), skipped_products=t.first_attn * t.forwards - t.attn_products,
            num_calls=t.forwards,
        )

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
