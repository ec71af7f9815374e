"""The generation side of ``timeripple eval``: dense runs once (cached per prompt and seed), then run sets
per method and knob, timed and scored against dense.

Results are kept per run, so confirming a knob found on the first ``search_runs`` runs only generates the
remaining runs. With ``batch_size > 1`` one pipeline call serves several runs: its counted savings
(a per-call figure) and its wall time are shared equally by the runs of the batch (all runs have the same
shape, so the mean over the runs is exact), and a run is always generated in the same batch as in the
dense run (whole batches are generated), so batch-size-dependent kernels cannot tell it from dense.
"""

from __future__ import annotations

import logging
import math
import time
import weakref
from typing import Any, Dict, List, Optional

import torch

from .._validation import value_error
from .metrics import psnr, ssim

logger = logging.getLogger(__name__)

__all__ = ["Runner", "CRITERIA"]

CRITERIA = ("colour", "shape", "direction", "all")
# pipeline -> {(run, call key, per_step): dense record}; lives as long as the pipeline
_DENSE_CACHES: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()


class Runner:
    """Generates and scores run sets for one :func:`~timeripple.eval.evaluate` call."""

    def __init__(self, pipe, runs, call, batch_size, device, per_step, adherence, tqdm):
        self.pipe, self.runs, self.call, self.batch_size, self.device = pipe, runs, call, batch_size, device
        self.per_step, self.adherence, self.tqdm = per_step, adherence, tqdm
        self.records: Dict[tuple, Dict[str, Any]] = {}  # (method, knob, run index) -> per-run record
        self.scores: Dict[tuple, Dict[str, Any]] = {}
        self.exact_cache: Dict[int, torch.Tensor] = {}
        self.dense_runs: List[Dict[str, Any]] = []
        self.dense_summary: Dict[str, Any] = {}

    # -- dense ------------------------------------------------------------------------------------

    def dense(self) -> None:
        store = _DENSE_CACHES.setdefault(self.pipe, {})
        call_key = tuple(sorted((k, repr(v)) for k, v in self.call.items()))
        keys = [(run, call_key, self.per_step) for run in self.runs]
        missing = self._slots([i for i, key in enumerate(keys) if key not in store])
        for i, record in zip(missing, self._generate(missing, None, "dense")):
            store[keys[i]] = record
        self.dense_runs = [store[key] for key in keys]
        adh = [r["adherence"] for r in self.dense_runs] if self.adherence else None
        self.dense_summary = {
            "seconds_per_video": sum(r["seconds"] for r in self.dense_runs) / len(self.runs),
            "cached_runs": len(self.runs) - len(missing), "adherence": adherence_summary(adh),
            "adherence_per_run": adh,
        }

    # -- methods ----------------------------------------------------------------------------------

    def measure(self, method, config, knob, n: int) -> Dict[str, Any]:
        """Scores of ``method`` at ``knob`` over the first ``n`` runs (generating only what is missing)."""
        key = (method.name, knob, n)
        if key in self.scores:
            return self.scores[key]
        missing = self._slots([i for i in range(n) if (method.name, knob, i) not in self.records])
        label = f"{method.name} {'' if knob is None else f'{knob:.4g}'}"
        for i, record in zip(missing, self._generate(missing, (method, config, knob), label)):
            self.records[(method.name, knob, i)] = record
        self.scores[key] = self._score([self.records[(method.name, knob, i)] for i in range(n)])
        logger.info("%s %s=%s on %d runs: %.4f savings on the reusing steps", method.name, method.knob, knob, n,
                    self.scores[key]["savings_reusing"])
        return self.scores[key]

    def _slots(self, indices: List[int]) -> List[int]:
        """Whole batches (slots ``[k·bs, (k+1)·bs)``) around ``indices``: every run is always generated in
        the batch it has in the dense run, so batch-dependent kernels cannot differ from dense."""
        slots = sorted({i // self.batch_size for i in indices})
        return [i for k in slots for i in range(k * self.batch_size, min((k + 1) * self.batch_size, len(self.runs)))]

    def _score(self, records: List[Dict[str, Any]]) -> Dict[str, Any]:
        n = len(records)
        dense = self.dense_runs[:n]
        p = [psnr(d["video"], r["video"]) for d, r in zip(dense, records)]
        s = [ssim(d["video"], r["video"]) for d, r in zip(dense, records)]
        finite = [x for x in p if math.isfinite(x)]
        out = {
            "runs": n, "savings_reusing": _mean([r["savings_reusing"] for r in records]),
            "savings_total": _mean([r["savings_total"] for r in records]),
            "psnr_mean": _mean(finite) if finite else math.inf, "psnr_min": min(p), "psnr": p,
            "ssim_mean": _mean(s), "ssim": s, "identical_runs": n - len(finite),
            "seconds_per_video": _mean([r["seconds"] for r in records]),
            "step_savings": [_mean(col) for col in zip(*(r["step_savings"] for r in records))],
        }
        if self.per_step:
            out["step_error"] = [_mean(col) for col in zip(*(r["step_error"] for r in records))]
        if self.adherence:
            rows = [r["adherence"] for r in records]
            out["adherence"] = adherence_summary(rows)
            out["adherence"]["lost"] = {c: sum(bool(d["adherence"][c]) and not r[c] for d, r in zip(dense, rows))
                                        for c in CRITERIA}
            out["adherence"]["per_run"] = [{c: r[c] for c in CRITERIA} for r in rows]
        return out

    def time_warm(self, setup=None, repeats: int = 1) -> float:
        """Seconds per video of the first batch, timed again after the kernels are warm (for CUDA, where the
        first calls pay for cuDNN / Triton set-up); ``setup`` is ``(method, config, knob)`` or `None` (dense)."""
        batch = list(range(min(self.batch_size, len(self.runs))))
        return min(self._call(batch, setup)[0]["seconds"] for _ in range(repeats))

    # -- generation -------------------------------------------------------------------------------

    def _generate(self, indices: List[int], setup, desc: str) -> List[Dict[str, Any]]:
        """One record per run index: video, counted savings, seconds, per-step latent error, adherence."""
        records: List[Dict[str, Any]] = []
        bar = self.tqdm(total=len(indices), desc=desc, leave=False) if self.tqdm and indices else None
        for start in range(0, len(indices), self.batch_size):
            batch = indices[start : start + self.batch_size]
            records += self._call(batch, setup)
            if bar:
                bar.update(len(batch))
        if bar:
            bar.close()
        return records

    def _call(self, batch: List[int], setup) -> List[Dict[str, Any]]:
        from ..diffusers import apply_timeripple

        runs = [self.runs[i] for i in batch]
        latents: List[torch.Tensor] = []
        call = dict(self.call, prompt=[p for p, _ in runs], generator=[torch.Generator().manual_seed(s) for _, s in runs])
        if self.per_step:
            def record(pipe, i, t, tensors):
                latents.append(tensors["latents"].detach().float().cpu())
                return {}
            call.update(callback_on_step_end=record, callback_on_step_end_tensor_inputs=["latents"])
        handle = None
        if setup is not None:
            method, config, knob = setup
            if method.install is not None:
                handle = method.install(self.pipe, knob, config)
            else:
                chosen = method.setup(knob, config)
                handle = apply_timeripple(self.pipe, chosen.config, attention_fn=chosen.attention)
        try:
            self._sync()
            start = time.perf_counter()
            out = self.pipe(**call)
            self._sync()
            seconds = (time.perf_counter() - start) / len(batch)
            stats = handle.stats if handle is not None else None
        finally:
            if handle is not None:
                handle.remove()
        frames = getattr(out, "frames", None)
        if not isinstance(frames, torch.Tensor) or frames.ndim != 5 or frames.shape[0] != len(batch):
            raise value_error("pipe(...).frames", type(frames).__name__, f"must be a tensor (B={len(batch)}, F, C, H, "
                              "W) with output_type='pt'", "use a video pipeline that returns `.frames`")
        savings_total, savings_reusing, step_savings = 0.0, 0.0, []
        if stats is not None:
            step_savings = list(stats.step_savings)
            reuse = [i for i, theta in enumerate(stats.thresholds) if theta is not None]
            savings_total = stats.total_savings
            savings_reusing = _mean([step_savings[i] for i in reuse]) if reuse else 0.0
        steps = torch.stack(latents, 1) if self.per_step else None  # (B, steps, ...)
        records = []
        for b, (index, (prompt, _)) in enumerate(zip(batch, runs)):
            video = frames[b].detach().float().cpu()
            rec = {"video": video, "seconds": seconds, "savings_total": savings_total,
                   "savings_reusing": savings_reusing, "step_savings": step_savings}
            if self.per_step:
                if setup is None:
                    rec["traj"] = steps[b]
                else:
                    ref = self.dense_runs[index]["traj"]
                    rec["step_error"] = [float((steps[b, i] - ref[i]).pow(2).mean().sqrt()) for i in range(ref.shape[0])]
            if self.adherence:
                from .adherence import score_adherence

                rec["adherence"] = score_adherence(video, prompt)
            records.append(rec)
        return records

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def adherence_summary(rows) -> Optional[Dict[str, Any]]:
    """Accuracy per criterion over ``rows`` of :func:`score_adherence` results (`None` without rows)."""
    if not rows:
        return None
    out: Dict[str, Any] = {}
    for c in CRITERIA:
        judged = [bool(r[c]) for r in rows if r[c] is not None]
        out[c] = sum(judged) / len(judged) if judged else None
    out["n"] = len(rows)
    return out
