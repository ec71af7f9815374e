"""Statistics of one generation: counted attention savings per step, per layer and in total.

Every figure here is **counted** (partial products of ``q kᵀ`` that TimeRipple skips, the paper's
metric), never timed. Totals are FLOP-weighted: each attention call counts with its dense product count
``RippleStats.qk_products``, and dense steps count as zero savings with their full weight.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Any, Dict, List, Optional

import torch

__all__ = ["GenerationStats", "StatsRecorder"]


@dataclasses.dataclass
class GenerationStats:
    r"""
    Counted savings of the last generation (one pipeline call) of a TimeRipple-patched model.

    Args:
        num_steps (`int`): denoising steps seen (0 before the first call).
        thresholds (`list`): per step, the θ used (`None` = dense step; a dict for per-axis θ).
        step_savings (`list[float]`): per step, the FLOP-weighted fraction of ``q kᵀ`` products skipped
            over all layers and calls of that step (0.0 on dense steps).
        layer_savings (`dict[str, float]`): per layer, the FLOP-weighted fraction over all steps.
        total_savings (`float`): the FLOP-weighted fraction over the whole generation.
        qk_products (`int`): dense ``q kᵀ`` product count of all self-attention calls.
        skipped_products (`float`): how many of them were skipped.
        num_calls (`int`): self-attention calls seen.

    Example:

    ```py
    >>> handle = timeripple.apply_timeripple(pipe, "wan2.1")
    >>> video = pipe(prompt, num_inference_steps=50).frames[0]
    >>> stats = timeripple.get_stats(pipe)
    >>> print(stats)            # a table per step
    >>> stats.total_savings     # e.g. 0.71
    ```
    """

    num_steps: int = 0
    thresholds: List[Any] = dataclasses.field(default_factory=list)
    step_savings: List[float] = dataclasses.field(default_factory=list)
    layer_savings: Dict[str, float] = dataclasses.field(default_factory=dict)
    total_savings: float = 0.0
    qk_products: int = 0
    skipped_products: float = 0.0
    num_calls: int = 0

    def to_dict(self) -> Dict[str, Any]:
        """Plain Python values, ready for ``json.dump``; says that the figures are counted."""
        out = dataclasses.asdict(self)
        out["kind"] = "counted"
        return out

    def summary(self) -> str:
        """A readable table: one row per step, then the total."""
        lines = [
            "TimeRipple statistics (counted q·kᵀ partial products skipped, FLOP-weighted)",
            f"{'step':>5} | {'threshold':>22} | {'qk savings':>10}",
            f"{'-' * 5}-+-{'-' * 22}-+-{'-' * 10}",
        ]
        for step, (theta, saving) in enumerate(zip(self.thresholds, self.step_savings)):
            lines.append(f"{step:>5} | {_fmt_theta(theta):>22} | {saving:>9.1%}")
        lines.append(f"total over {self.num_steps} steps, {len(self.layer_savings)} layers, "
                     f"{self.num_calls} calls: {self.total_savings:.1%} of {self.qk_products:.3g} products")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def _fmt_theta(theta) -> str:
    if theta is None:
        return "dense"
    if isinstance(theta, dict):
        return ", ".join(f"{a}={v:.3g}" for a, v in theta.items())
    return f"{theta:.4g}"


def _new_entry():  # a module-level factory, not a lambda: the recorder pickles with the model
    return [0, 0.0]


class StatsRecorder:
    """Collects one entry per self-attention call; shared by every transformer of a pipeline.

    Bookkeeping runs outside compiled regions (``@torch.compiler.disable``) and stores plain floats.
    """

    def __init__(self):
        self._finished = False
        self._schedule = None
        self.reset()

    def reset(self) -> None:
        self.num_steps = 0
        self.last_step: Optional[int] = None
        self.thresholds: Dict[int, Any] = {}
        # step -> [weight, skipped]; layer -> [weight, skipped]
        self.per_step = defaultdict(_new_entry)
        self.per_layer = defaultdict(_new_entry)
        self.num_calls = 0
        self._finished = False

    def finish(self) -> None:
        """Mark the end of a generation; the next call starts a new one."""
        self._finished = True

    @torch.compiler.disable
    def begin_call(self, step: int, num_steps: int, schedule=None) -> None:
        """Start a forward call at ``step``; a new generation resets the statistics. ``schedule`` is the
        scheduler's ``timesteps`` object: ``set_timesteps`` makes a new one at the start of every pipeline
        call, so a call that went back to the same step with a new one is a new generation (an earlier
        call that stopped at step 0, by an exception, never reached the end-of-call reset)."""
        last = self.last_step
        restarted = schedule is not None and self._schedule is not None and schedule is not self._schedule
        if self._finished or (last is not None and (step < last or num_steps != self.num_steps
                                                    or (restarted and step <= last))):
            self.reset()
        self._schedule = schedule
        self.num_steps = num_steps
        self.last_step = step

    def previous_step(self) -> Optional[int]:
        """The last step seen in the current generation, `None` when a new one is about to start."""
        return None if self._finished else self.last_step

    def set_threshold(self, step: int, threshold) -> None:
        self.thresholds[step] = threshold

    @torch.compiler.disable
    def add(self, step: int, layer: str, qk_savings, qk_products: int) -> None:
        """Count one call. ``qk_savings`` is a float, or a 0-d tensor that stays where it is (a GPU
        tensor is summed on the GPU, so a reuse step makes no host sync); :meth:`stats` reads it."""
        self.num_calls += 1
        if isinstance(qk_savings, torch.Tensor):
            skipped = qk_savings.detach().double() * qk_products
        else:
            skipped = float(qk_savings) * qk_products
        for table, key in ((self.per_step, step), (self.per_layer, layer)):
            table[key][0] += qk_products
            table[key][1] = table[key][1] + skipped

    def _settle(self) -> None:
        """Bring device-side sums to the host: one sync per device holding any."""
        entries = [e for table in (self.per_step, self.per_layer) for e in table.values()
                   if isinstance(e[1], torch.Tensor)]
        for device in {e[1].device for e in entries}:
            group = [e for e in entries if e[1].device == device]
            for e, value in zip(group, torch.stack([e[1].reshape(()) for e in group]).tolist()):
                e[1] = float(value)

    def stats(self) -> GenerationStats:
        self._settle()
        steps = range(self.num_steps)
        total_weight = sum(w for w, _ in self.per_step.values())
        total_skipped = sum(s for _, s in self.per_step.values())

        def ratio(entry):
            return entry[1] / entry[0] if entry[0] else 0.0

        return GenerationStats(
            num_steps=self.num_steps,
            thresholds=[self.thresholds.get(i) for i in steps],
            step_savings=[ratio(self.per_step[i]) if i in self.per_step else 0.0 for i in steps],
            layer_savings={name: ratio(entry) for name, entry in self.per_layer.items()},
            total_savings=total_skipped / total_weight if total_weight else 0.0,
            qk_products=int(total_weight),
            skipped_products=float(total_skipped),
            num_calls=self.num_calls,
        )
