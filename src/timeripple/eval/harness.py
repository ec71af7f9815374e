"""``evaluate``: run a pipeline dense and with a list of methods from the same prompts and seeds, at matched
savings, and measure what each method costs in quality.

Per method and target level the knob is searched (:func:`~timeripple.eval.search.match_savings`) until
the counted savings on the reusing steps (steps whose scheduled threshold is not `None`), averaged over
the runs, are within ``tol`` of the target: first on ``search_runs`` runs, then confirmed (and, if
needed, refined) on all runs. Every figure reported comes from the full set at the achieved savings.
See ``docs/eval.md``.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
import weakref
from typing import Any, Dict, List, Optional, Sequence

import torch

from .._validation import type_error, value_error
from ..config import load_config
from . import prompts as defaults
from .capture import attention_error, capture_attention, reusing_steps, spread
from .methods import Geometry, Method, get_method
from .metrics import psnr, ssim
from .report import EvalResult
from .search import SearchResult, match_savings

logger = logging.getLogger(__name__)

__all__ = ["evaluate", "check_pipeline", "DEFAULT_METHODS"]

DEFAULT_METHODS = ("channel", "token-strict", "token-budget", "token-rms", "magnitude", "skip")
REQUIRED_CALL_ARGS = ("prompt", "generator", "num_inference_steps", "output_type")
CRITERIA = ("colour", "shape", "direction", "all")
_DENSE_CACHES: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()


def check_pipeline(pipe) -> Dict[str, bool]:
    """Check that the harness can drive ``pipe``; returns which optional call arguments it takes.

    Raises:
        `TypeError`: ``pipe`` is not callable or has no ``transformer``. `ValueError`: its call lacks one of
            ``prompt``, ``generator``, ``num_inference_steps``, ``output_type`` (the message names them).
    """
    if not callable(pipe):
        raise type_error("pipe", pipe, "a diffusers video pipeline (callable)", "pass e.g. WanPipeline.from_pretrained(...)")
    if not isinstance(getattr(pipe, "transformer", None), torch.nn.Module):
        raise type_error("pipe", pipe, "a pipeline with a `transformer` module (a video DiT)",
                         "pass a diffusers video pipeline such as WanPipeline or HunyuanVideoPipeline")
    params = inspect.signature(pipe.__call__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    missing = [name for name in REQUIRED_CALL_ARGS if name not in params and not takes_any]
    if missing:
        raise value_error(
            "pipe", type(pipe).__name__, f"its __call__ lacks {missing}; the harness calls pipe(prompt=[...], "
            "generator=[...], num_inference_steps=..., output_type='pt') and reads `.frames`",
            "wrap the pipeline in a callable that accepts these arguments and returns an object with `.frames` "
            "(B, F, C, H, W) in [0, 1]",
        )
    return {name: name in params or takes_any for name in ("guidance_scale", "callback_on_step_end")}


def evaluate(
    pipe=None,
    methods: Sequence = DEFAULT_METHODS,
    levels: Sequence[float] = defaults.DEFAULT_LEVELS,
    *,
    prompts: Optional[Sequence[str]] = None,
    seeds: Sequence[int] = defaults.EVAL_SEEDS,
    num_inference_steps: int = defaults.DEFAULT_STEPS,
    guidance_scale: Optional[float] = defaults.DEFAULT_GUIDANCE,
    config="wan2.1",
    search_runs: Optional[int] = None,
    batch_size: Optional[int] = None,
    device=None,
    tol: float = defaults.SAVINGS_TOLERANCE,
    tensor_level: bool = True,
    capture_steps: int = 3,
    capture_layers: Optional[int] = None,
    per_step: bool = True,
    adherence: Optional[bool] = None,
    progress: bool = True,
    pipe_kwargs: Optional[Dict[str, Any]] = None,
) -> EvalResult:
    r"""
    Compare attention methods against dense generation at matched savings.

    Args:
        pipe (`DiffusionPipeline`, *optional*): any diffusers video pipeline whose call accepts ``prompt``,
            ``generator``, ``num_inference_steps`` and ``output_type`` (TimeRipple must not be applied).
            Default: the shipped tiny model (:func:`timeripple.demo.load_tiny_pipeline`) on ``device``.
        methods (`list[str | Method]`): registry names (:func:`~timeripple.eval.list_methods`) or methods.
        levels (`list[float]`, defaults to ``(0.5, 0.75, 0.875)``): target savings on the reusing steps.
        prompts (`list[str]`, *optional*): default :data:`~timeripple.eval.EVAL_PROMPTS`; every prompt runs
            with every seed (CPU generators: the same noise on every device).
        seeds (`list[int]`, defaults to ``(0, 1)``), num_inference_steps (`int`, defaults to 20),
        guidance_scale (`float`, defaults to 5; `None` = the pipeline's default).
        config (`str` or [`TimeRippleConfig`], defaults to ``"wan2.1"``): the base config; its schedule gives
            the dense and the reusing steps of every method, and scaled methods scale its thresholds.
        search_runs (`int`, *optional*): runs used while searching the knob (the first ones); the result is
            then confirmed on all runs. Default: all runs. Fewer is cheaper on a CPU.
        batch_size (`int`, *optional*): runs per pipeline call; default all runs on CUDA, 1 elsewhere.
        device (`str`, *optional*): where the pipeline runs (it is moved there); default: where it is.
        tol (`float`, defaults to 0.005): absolute tolerance on the achieved savings.
        tensor_level (`bool`, defaults to `True`): capture q/k/v at ``capture_steps`` reusing steps (spread
            over the reusing range) of ``capture_layers`` layers (default all) from the first run and report
            each method's attention-output MSE at savings matched per call.
        per_step (`bool`, defaults to `True`): record the latent error after every step vs the dense
            trajectory (needs ``callback_on_step_end``).
        adherence (`bool`, *optional*): score prompt adherence; default on for the tiny model only.
        progress (`bool`, defaults to `True`): tqdm progress bars.
        pipe_kwargs (`dict`, *optional*): more arguments for every pipeline call (e.g. ``height``).

    Returns:
        [`EvalResult`]: ``.save(folder)`` writes ``results.json``, ``results.md`` and the plots.

    Example:

    ```py
    >>> from timeripple.eval import evaluate
    >>> result = evaluate(methods=["channel", "token-budget"], levels=[0.5], prompts=["a green circle moving "
    ...                   "right slowly on a black background"], seeds=[0], num_inference_steps=10)
    >>> print(result.markdown()); result.save("eval_out")
    ```
    """
    from tqdm.auto import tqdm

    methods = [get_method(m) for m in methods]
    levels = [_check_level(x) for x in levels]
    config = load_config(config)
    prompts = list(defaults.EVAL_PROMPTS if prompts is None else prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise value_error("prompts", prompts, "must be a non-empty list of strings", "pass captions")
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise value_error("seeds", seeds, "must be a non-empty list of ints >= 0", "pass e.g. seeds=[0, 1]")
    if not isinstance(num_inference_steps, int) or num_inference_steps < 2:
        raise value_error("num_inference_steps", num_inference_steps, "must be an int >= 2", "pass e.g. 20")
    runs = [(p, s) for p in prompts for s in seeds]
    search_runs = len(runs) if search_runs is None else search_runs
    if not isinstance(search_runs, int) or not 1 <= search_runs <= len(runs):
        raise value_error("search_runs", search_runs, f"must be an int in [1, {len(runs)}] (the number of runs)",
                          "pass fewer search runs, or leave it unset to search on all runs")
    reusing = reusing_steps(config, num_inference_steps)
    if not reusing:
        raise value_error("config", config.name, f"reuses on no step of {num_inference_steps}",
                          "use more steps, or a config whose ramp starts earlier")
    if pipe is None:
        from ..demo import load_tiny_pipeline

        pipe = load_tiny_pipeline(device=device or "cpu")
    elif device is not None:
        pipe.to(device)
    takes = check_pipeline(pipe)
    device = torch.device(getattr(pipe, "device", "cpu") if device is None else device)
    if batch_size is None:
        batch_size = len(runs) if device.type == "cuda" else 1
    if not isinstance(batch_size, int) or batch_size < 1:
        raise value_error("batch_size", batch_size, "must be an int >= 1", "pass e.g. 1 (CPU) or 16 (CUDA)")
    if adherence is None:
        adherence = type(pipe).__name__ == "TinyT2VPipeline"
    per_step = per_step and takes["callback_on_step_end"]
    call = dict(pipe_kwargs or {}, num_inference_steps=num_inference_steps, output_type="pt")
    if guidance_scale is not None:
        call["guidance_scale"] = guidance_scale
    runner = _Runner(pipe, runs, call, batch_size, device, per_step, adherence, tqdm if progress else None)
    old_bar = dict(getattr(pipe, "_progress_bar_config", {}))
    pipe.set_progress_bar_config(disable=True)
    try:
        runner.dense()
        calls, geo, num_layers = capture_attention(
            pipe, config, dict(call, prompt=[runs[0][0]], generator=[torch.Generator().manual_seed(runs[0][1])]),
            steps=spread(reusing, capture_steps), max_layers=capture_layers, store=tensor_level)
        geometry = Geometry(geo[0], geo[1], config.window, config.axes) if geo else None
        rows, tensor = [], []
        pairs = [(m, lv) for m in methods for lv in (levels if m.knob is not None else [None])]
        bar = tqdm(pairs, desc="methods", disable=not progress, leave=False)
        for method in methods:
            search_hist: Dict[float, float] = {}
            full_hist: Dict[float, float] = {}
            for level in (levels if method.knob is not None else [None]):
                bar.set_postfix_str(f"{method.name} @ {'-' if level is None else f'{level:.1%}'}")
                found, measured = _match(runner, method, config, level, geometry, search_runs, tol,
                                         search_hist, full_hist)
                rows.append(_row(method, level, found, measured, runner.dense_summary))
                if tensor_level and calls and method.build is not None:
                    err = attention_error(method, calls, config, level, tol=tol, device=device,
                                          first_guess=None if found is None else found.knob,
                                          exact_cache=runner.exact_cache)
                    tensor.append({"method": method.name, "target": level, **err})
                bar.update()
        bar.close()
    finally:
        pipe.set_progress_bar_config(**old_bar) if old_bar else pipe.set_progress_bar_config(disable=False)
    _add_channel_ratios(tensor)
    settings = {
        "pipeline": type(pipe).__name__, "config": config.name, "prompts": prompts, "seeds": list(seeds),
        "runs": len(runs), "search_runs": search_runs, "num_inference_steps": num_inference_steps,
        "guidance_scale": guidance_scale, "levels": levels, "tol": tol, "batch_size": batch_size,
        "device": str(device), "reusing_steps": reusing, "capture_steps": sorted({c.step for c in calls}),
        "captured_layers": sorted({c.layer for c in calls}), "num_layers": num_layers,
        "captured_calls": [c.describe() for c in calls], "pipe_kwargs": dict(pipe_kwargs or {}),
        "per_step": per_step, "adherence": adherence,
    }
    methods_info = [{"name": m.name, "description": m.description, "knob": m.knob, "savings": m.savings}
                    for m in methods]
    return EvalResult(settings=settings, methods=methods_info, dense=runner.dense_summary, rows=rows,
                      tensor=tensor, environment=_environment(device))


def _check_level(level) -> float:
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
        raise value_error("levels", level, "each target saving must be a number in (0, 1)", "pass e.g. 0.5 0.75")
    return float(level)


def _match(runner, method: Method, config, level, geometry, search_runs, tol, search_hist, full_hist):
    """Search the knob on the search runs, confirm on all runs, refine on all runs if the confirmation
    misses. Returns ``(SearchResult | None, measurement on all runs)``."""
    if level is None:  # a method without a knob: measured once
        return None, runner.measure(method, config, None, len(runner.runs))
    guess = method.default_knob
    if method.first_guess is not None and geometry is not None:
        guess = method.first_guess(level, geometry)
    if full_hist:  # the previous level's knobs bracket this one on the full set
        guess = min(full_hist, key=lambda k: abs(full_hist[k] - level))

    def savings_on(n, hist):
        return lambda knob: runner.measure(method, config, knob, n)["savings_reusing"]

    common = dict(bounds=method.bounds, log_knob=method.log_knob, tol=tol, name=method.name, knob_name=method.knob)
    full = len(runner.runs)
    if search_runs < full:
        found = match_savings(savings_on(search_runs, search_hist), level, first_guess=guess,
                              history=search_hist, **common)
        full_hist.setdefault(found.knob, runner.measure(method, config, found.knob, full)["savings_reusing"])
        guess = found.knob
    found = match_savings(savings_on(full, full_hist), level, first_guess=guess, history=full_hist, **common)
    return found, runner.measure(method, config, found.knob, full)


def _row(method: Method, level, found: Optional[SearchResult], m: Dict[str, Any], dense) -> Dict[str, Any]:
    row = {"method": method.name, "target": level, "knob_name": method.knob,
           "knob": None if found is None else found.knob, **m}
    row["converged"] = True if found is None else found.converged
    row["reachable"] = True if found is None else found.reachable
    row["message"] = "" if found is None else found.message
    row["search"] = None if found is None else found.evaluations
    row["speedup_timed"] = dense["seconds_per_video"] / m["seconds_per_video"] if m["seconds_per_video"] else None
    if row["message"]:
        logger.warning("%s", row["message"])
    return row


def _add_channel_ratios(tensor: List[Dict[str, Any]]) -> None:
    channel = {e["target"]: e["mse"] for e in tensor if e["method"] == "channel"}
    for entry in tensor:
        ref = channel.get(entry["target"])
        entry["mse_vs_channel"] = entry["mse"] / ref if ref else None


def _environment(device) -> Dict[str, Any]:
    import platform

    import diffusers

    import timeripple

    env = {"torch": torch.__version__, "diffusers": diffusers.__version__, "timeripple": timeripple.__version__,
           "python": platform.python_version(), "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
           "device": str(device), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
    return env


class _Runner:
    """Generates run sets (dense once, then per method and knob), times them and scores them."""

    def __init__(self, pipe, runs, call, batch_size, device, per_step, adherence, tqdm):
        self.pipe, self.runs, self.call, self.batch_size, self.device = pipe, runs, call, batch_size, device
        self.per_step, self.adherence, self.tqdm = per_step, adherence, tqdm
        self.cache: Dict[tuple, Dict[str, Any]] = {}
        self.exact_cache: Dict[int, torch.Tensor] = {}
        self.dense_videos: List[torch.Tensor] = []
        self.dense_traj: List[List[torch.Tensor]] = []
        self.dense_summary: Dict[str, Any] = {}

    def dense(self) -> None:
        store = _DENSE_CACHES.setdefault(self.pipe, {})
        key_call = tuple(sorted((k, repr(v)) for k, v in self.call.items()))
        missing = [r for r in self.runs if (r, key_call, self.per_step) not in store]
        if missing:
            out = self._generate(missing, None, desc="dense")
            for i, r in enumerate(missing):
                store[(r, key_call, self.per_step)] = {
                    "video": out["videos"][i], "traj": out["traj"][i] if self.per_step else None,
                    "seconds": out["seconds_per_video"], "adherence": out["adherence"][i] if out["adherence"] else None}
        entries = [store[(r, key_call, self.per_step)] for r in self.runs]
        self.dense_videos = [e["video"] for e in entries]
        self.dense_traj = [e["traj"] for e in entries]
        adh = [e["adherence"] for e in entries] if self.adherence else None
        self.dense_summary = {"seconds_per_video": sum(e["seconds"] for e in entries) / len(entries),
                              "cached_runs": len(self.runs) - len(missing), "adherence": _adherence_summary(adh),
                              "adherence_per_run": adh}

    def measure(self, method: Method, config, knob, n: int) -> Dict[str, Any]:
        key = (method.name, knob, n)
        if key not in self.cache:
            out = self._generate(self.runs[:n], (method, config, knob), desc=f"{method.name} {knob if knob is None else f'{knob:.4g}'}")
            self.cache[key] = self._score(out, n)
            logger.info("%s %s=%s on %d runs: %.4f savings on the reusing steps", method.name, method.knob, knob,
                        n, self.cache[key]["savings_reusing"])
        return self.cache[key]

    def _score(self, out, n) -> Dict[str, Any]:
        p = [psnr(d, v) for d, v in zip(self.dense_videos[:n], out["videos"])]
        s = [ssim(d, v) for d, v in zip(self.dense_videos[:n], out["videos"])]
        finite = [x for x in p if math.isfinite(x)]
        m = {"runs": n, "savings_reusing": out["savings_reusing"], "savings_total": out["savings_total"],
             "psnr_mean": sum(finite) / len(finite) if finite else math.inf, "psnr_min": min(p),
             "psnr": p, "ssim_mean": sum(s) / len(s), "ssim": s, "identical_runs": len(p) - len(finite),
             "seconds_per_video": out["seconds_per_video"], "step_savings": out["step_savings"]}
        if self.per_step:
            m["step_error"] = [sum(e[i] for e in out["step_error"]) / n for i in range(len(out["step_error"][0]))]
        if self.adherence:
            dense = self.dense_summary["adherence_per_run"][:n]
            m["adherence"] = _adherence_summary(out["adherence"])
            m["adherence"]["lost"] = {c: sum(bool(d[c]) and not r[c] for d, r in zip(dense, out["adherence"]))
                                      for c in CRITERIA}
        return m

    def _generate(self, runs, setup, desc) -> Dict[str, Any]:
        from ..diffusers import apply_timeripple

        videos, traj, errors, adh = [], [], [], []
        seconds, weight, skipped_total, skipped_reusing, step_sums = 0.0, 0, 0.0, 0.0, None
        batches = [runs[i : i + self.batch_size] for i in range(0, len(runs), self.batch_size)]
        bar = self.tqdm(total=len(runs), desc=desc, leave=False) if self.tqdm else None
        for batch_index, batch in enumerate(batches):
            offset = batch_index * self.batch_size
            latents: List[torch.Tensor] = []
            call = dict(self.call, prompt=[p for p, _ in batch],
                        generator=[torch.Generator().manual_seed(s) for _, s in batch])
            if self.per_step:
                def record(pipe, i, t, tensors, latents=latents):
                    latents.append(tensors["latents"].detach().float().cpu())
                    return {}
                call.update(callback_on_step_end=record, callback_on_step_end_tensor_inputs=["latents"])
            handle = None
            if setup is not None:
                method, config, knob = setup
                if method.install is not None:
                    handle = method.install(self.pipe, knob, config)
                else:
                    s = method.setup(knob, config)
                    handle = apply_timeripple(self.pipe, s.config, attention_fn=s.attention)
            try:
                self._sync()
                start = time.perf_counter()
                out = self.pipe(**call)
                self._sync()
                seconds += time.perf_counter() - start
                stats = handle.stats if handle is not None else None
            finally:
                if handle is not None:
                    handle.remove()
            frames = getattr(out, "frames", None)
            if not isinstance(frames, torch.Tensor) or frames.ndim != 5 or frames.shape[0] != len(batch):
                raise value_error("pipe(...).frames", type(frames).__name__, f"must be a tensor (B={len(batch)}, F, C, "
                                  "H, W) with output_type='pt'", "use a video pipeline that returns `.frames`")
            videos += list(frames.detach().float().cpu())
            if self.per_step:
                steps = torch.stack(latents, 1)  # (B, steps, ...)
                for b in range(len(batch)):
                    if setup is None:
                        traj.append(steps[b])
                    else:
                        ref = self.dense_traj[offset + b]
                        errors.append([float((steps[b, i] - ref[i]).pow(2).mean().sqrt()) for i in range(ref.shape[0])])
            if self.adherence:
                from .adherence import score_adherence

                adh += [score_adherence(v, p) for v, (p, _) in zip(frames, batch)]
            if stats is not None:
                reuse = [i for i, th in enumerate(stats.thresholds) if th is not None]
                per = stats.step_savings
                step_sums = [a + len(batch) * b for a, b in zip(step_sums or [0.0] * len(per), per)]
                skipped_total += len(batch) * stats.total_savings
                skipped_reusing += len(batch) * (sum(per[i] for i in reuse) / len(reuse) if reuse else 0.0)
            weight += len(batch)
            if bar:
                bar.update(len(batch))
        if bar:
            bar.close()
        return {"videos": videos, "traj": traj, "step_error": errors, "adherence": adh,
                "seconds_per_video": seconds / len(runs), "savings_total": skipped_total / weight,
                "savings_reusing": skipped_reusing / weight,
                "step_savings": None if step_sums is None else [x / weight for x in step_sums]}

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def _adherence_summary(rows) -> Optional[Dict[str, Any]]:
    if not rows:
        return None
    out = {}
    for c in CRITERIA:
        judged = [bool(r[c]) for r in rows if r[c] is not None]
        out[c] = sum(judged) / len(judged) if judged else None
    out["n"] = len(rows)
    return out
