"""Tensor-level error: q/k/v captured from a pipeline's own self-attention layers, and each method's
attention-output error on them at matched savings.

:func:`capture_attention` runs the pipeline once with TimeRipple's processors installed and an attention
callable that records ``(q, k, v)`` (post-norm, post-RoPE, ``(B, H, N, D)``, with grid, text layout, mask,
the step's scheduled arguments) on the chosen reusing steps and layers, and returns exact attention, so
the run is the dense one. :func:`attention_error` then searches a method's knob per captured call until
the call's counted savings match the target, and reports the MSE of its output against exact attention.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from ..config import TimeRippleConfig
from ..stats import RippleStats
from .methods import Method
from .search import match_savings

logger = logging.getLogger(__name__)

__all__ = ["CapturedCall", "capture_attention", "attention_error", "reusing_steps", "spread"]


@dataclasses.dataclass
class CapturedCall:
    """One self-attention call of the pipeline: tensors on the CPU, and what the processors passed."""

    q: torch.Tensor  # (B, H, N, D)
    k: torch.Tensor  # (B, H, N, D)
    v: torch.Tensor  # (B, H, N, Dv)
    grid: tuple
    text_len: int
    text_position: str
    attn_mask: Optional[torch.Tensor]
    attention_kwargs: Dict[str, Any]
    step: int
    num_steps: int
    layer: str

    def describe(self) -> Dict[str, Any]:
        return {"step": self.step, "layer": self.layer, "shape": list(self.q.shape), "grid": list(self.grid),
                "text_len": self.text_len, "text_position": self.text_position}


def reusing_steps(config: TimeRippleConfig, num_steps: int) -> List[int]:
    """Steps of ``num_steps`` whose scheduled threshold is not `None` (where methods differ from dense)."""
    return [i for i in range(num_steps) if config.threshold_at(i, num_steps) is not None]


def spread(items: Sequence, count: Optional[int]) -> list:
    """``count`` items evenly spread over ``items`` (first and last included); all when ``count`` is None."""
    items = list(items)
    if count is None or count >= len(items):
        return items
    if count <= 1:
        return items[len(items) // 2 : len(items) // 2 + 1]
    return [items[round(i * (len(items) - 1) / (count - 1))] for i in range(count)]


def capture_attention(
    pipe, config: TimeRippleConfig, call_kwargs: Dict[str, Any], *, steps: Sequence[int],
    max_layers: Optional[int] = None, store: bool = True,
) -> tuple[List[CapturedCall], Optional[tuple], int]:
    """Run ``pipe(**call_kwargs)`` once and capture the first self-attention call per (step, layer).

    Args:
        pipe: the pipeline (TimeRipple must not be applied; it is applied and removed here).
        config ([`TimeRippleConfig`]): the schedule (which steps reuse) and the captured step arguments.
        call_kwargs (`dict`): the pipeline call (one run: batch 1 keeps memory small).
        steps (`list[int]`): reusing steps to capture.
        max_layers (`int`, *optional*): keep at most this many layers, evenly spread (all by default).
        store (`bool`, defaults to `True`): `False` records only the geometry.

    Returns:
        ``(calls, (grid, text_len), num_layers)``: the captured calls, the geometry of the first reusing
        call (`None` when no step reuses) and the number of self-attention layers seen.
    """
    from ..diffusers import apply_timeripple, remove_timeripple

    wanted = set(steps)
    seen: Dict[tuple, CapturedCall] = {}
    layers: List[str] = []
    geometry: List[tuple] = []

    def capture(q, k, v, *, grid, text_len, text_position, attn_mask, attention_kwargs, step, num_steps, layer):
        if not geometry:
            geometry.append((tuple(grid), int(text_len)))
        if layer not in layers:
            layers.append(layer)
        if store and step in wanted and (step, layer) not in seen:
            seen[(step, layer)] = CapturedCall(
                q.detach().cpu().clone(), k.detach().cpu().clone(), v.detach().cpu().clone(), tuple(grid),
                int(text_len), text_position, None if attn_mask is None else attn_mask.detach().cpu().clone(),
                dict(attention_kwargs), int(step), int(num_steps), layer,
            )
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return out, RippleStats.dense(q.shape, attention_kwargs.get("axes", ("t", "y", "x")))

    apply_timeripple(pipe, config, attention_fn=capture)
    try:
        pipe(**call_kwargs)
    finally:
        remove_timeripple(pipe)
    keep = set(spread(layers, max_layers))
    calls = [c for (s, name), c in sorted(seen.items(), key=lambda kv: (kv[0][0], layers.index(kv[0][1])))
             if name in keep]
    return calls, (geometry[0] if geometry else None), len(layers)


def _exact(call: CapturedCall, device) -> torch.Tensor:
    q, k, v = (x.to(device, torch.float32) for x in (call.q, call.k, call.v))
    mask = None if call.attn_mask is None else call.attn_mask.to(device)
    if mask is not None and mask.dtype != torch.bool:
        mask = mask.float()
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def attention_error(
    method: Method, calls: Sequence[CapturedCall], config: TimeRippleConfig, target: Optional[float], *,
    tol: float = 0.005, device="cpu", first_guess=None, exact_cache: Optional[dict] = None,
) -> Dict[str, Any]:
    """Attention-output MSE of ``method`` against exact attention on each captured call, with the knob
    searched per call so that the call's counted savings are within ``tol`` of ``target``.

    Returns:
        `dict`: ``mse`` (mean over calls), ``savings`` (mean achieved), ``per_call`` (step, layer, knob,
        savings, mse, converged), ``per_step`` ({step: mean mse}), ``all_converged``, ``messages``.
    """
    rows = []
    exact_cache = {} if exact_cache is None else exact_cache
    for index, call in enumerate(calls):
        if index not in exact_cache:
            exact_cache[index] = _exact(call, device)
        exact = exact_cache[index]
        q, k, v = (x.to(device) for x in (call.q, call.k, call.v))
        mask = None if call.attn_mask is None else call.attn_mask.to(device)
        outputs: Dict[float, torch.Tensor] = {}

        def run(knob):
            out, stats = method.setup(knob, config)(
                q, k, v, grid=call.grid, text_len=call.text_len, text_position=call.text_position, attn_mask=mask,
                attention_kwargs=call.attention_kwargs, step=call.step, num_steps=call.num_steps, layer=call.layer,
            )
            outputs[knob] = out
            return stats.qk_savings_mean

        if method.knob is None or target is None:
            knob, found = None, None
            savings = run(None)
        else:
            # the previous call's knob is the best start for the next (neighbouring layers / steps are alike)
            guess = rows[-1]["knob"] if rows and rows[-1]["converged"] else first_guess
            found = match_savings(run, target, bounds=method.bounds, log_knob=method.log_knob, first_guess=guess,
                                  tol=tol, name=method.name, knob_name=method.knob)
            knob, savings = found.knob, found.achieved
            if knob not in outputs:
                run(knob)
        mse = float(((outputs[knob].float() - exact) ** 2).mean())
        rows.append({"step": call.step, "layer": call.layer, "knob": knob, "savings": savings, "mse": mse,
                     "converged": True if found is None else found.converged,
                     "message": "" if found is None else found.message})
    per_step: Dict[int, List[float]] = {}
    for row in rows:
        per_step.setdefault(row["step"], []).append(row["mse"])
    return {
        "mse": sum(r["mse"] for r in rows) / len(rows) if rows else float("nan"),
        "savings": sum(r["savings"] for r in rows) / len(rows) if rows else float("nan"),
        "per_call": rows,
        "per_step": {s: sum(v) / len(v) for s, v in sorted(per_step.items())},
        "all_converged": all(r["converged"] for r in rows),
        "messages": sorted({r["message"] for r in rows if r["message"]}),
    }
