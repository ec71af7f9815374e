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
from typing import Any, Dict, List, Optional, Sequence

import torch

from .._validation import type_error, value_error
from ..config import load_config
from . import catalog  # noqa: F401  (registers every method)
from . import prompts as defaults
from .capture import attention_error, capture_attention, reusing_steps, spread
from .methods import Geometry, Method, get_method
from .report import EvalResult
from .runner import Runner
from .search import SearchResult, match_savings

logger = logging.getLogger(__name__)

__all__ = ["evaluate", "check_pipeline", "DEFAULT_METHODS"]

DEFAULT_METHODS = defaults.DEFAULT_METHODS
REQUIRED_CALL_ARGS = ("prompt", "generator", "num_inference_steps", "output_type")


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
    match_on: str = "reusing",
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
        match_on (`str`, defaults to ``"reusing"``): the savings matched to the targets: ``"reusing"`` (mean over
            the reusing steps of the schedule) or ``"total"`` (whole generation, FLOP-weighted; for methods
            such as caches that have no schedule of their own).
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
    if match_on not in ("reusing", "total"):
        raise value_error("match_on", match_on, "must be 'reusing' or 'total'", "pass match_on='reusing'")
    key = f"savings_{match_on}"
    # the base config lends its schedule and thresholds; every method sets its own mode and options on top
    config = load_config(config).with_mode("channel")
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
    runner = Runner(pipe, runs, call, batch_size, device, per_step, adherence, tqdm if progress else None)
    old_bar = dict(getattr(pipe, "_progress_bar_config", {}))
    pipe.set_progress_bar_config(disable=True)
    try:
        runner.dense()
        warm = device.type == "cuda"  # timings: warm re-timing of the first batch on CUDA
        if warm:
            runner.time_warm(None)  # warm-up
            runner.dense_summary["seconds_per_video"] = runner.time_warm(None)
        calls, geo, num_layers = capture_attention(
            pipe, config, dict(call, prompt=[runs[0][0]], generator=[torch.Generator().manual_seed(runs[0][1])]),
            steps=spread(reusing, capture_steps), max_layers=capture_layers if tensor_level else 1)
        geometry = Geometry(geo[0], geo[1], config.window, config.axes) if geo else None
        rows, tensor = [], []
        pairs = [(m, lv) for m in methods for lv in (levels if m.knob is not None else [None])]
        bar = tqdm(pairs, desc="methods", disable=not progress, leave=False)
        for method in methods:
            search_hist: Dict[float, float] = {}
            full_hist: Dict[float, float] = {}
            for level in (levels if method.knob is not None else [None]):
                bar.set_postfix_str(f"{method.name} @ {'-' if level is None else f'{level:.1%}'}")
                err = None
                if calls and method.build is not None:  # tensor level first: its knobs are a cheap first guess
                    err = attention_error(method, calls, config, level, tol=tol, device=device,
                                          first_guess=_first_guess(method, level, geometry, full_hist),
                                          exact_cache=runner.exact_cache)
                    if tensor_level:
                        tensor.append({"method": method.name, "target": level, **err})
                found, measured = _match(runner, method, config, level, geometry, search_runs, tol,
                                         search_hist, full_hist, key, _tensor_guess(method, err))
                if warm:
                    knob = None if found is None else found.knob
                    measured = dict(measured, seconds_per_video=runner.time_warm((method, config, knob)))
                rows.append(_row(method, level, found, measured, runner.dense_summary, key))
                bar.update()
        bar.close()
    finally:
        pipe.set_progress_bar_config(**old_bar) if old_bar else pipe.set_progress_bar_config(disable=False)
    _add_channel_ratios(tensor)
    settings = {
        "pipeline": type(pipe).__name__, "config": config.name, "prompts": prompts, "seeds": list(seeds),
        "runs": len(runs), "search_runs": search_runs, "num_inference_steps": num_inference_steps,
        "guidance_scale": guidance_scale, "levels": levels, "tol": tol, "match_on": match_on, "batch_size": batch_size,
        "device": str(device), "reusing_steps": reusing, "capture_steps": sorted({c.step for c in calls}),
        "captured_layers": sorted({c.layer for c in calls}), "num_layers": num_layers,
        "captured_calls": [c.describe() for c in calls], "pipe_kwargs": dict(pipe_kwargs or {}),
        "per_step": per_step, "adherence": adherence,
        "timing": "warm: first batch re-timed after warm-up, synchronised" if warm else "every generation, as run",
    }
    methods_info = [{"name": m.name, "description": m.description, "knob": m.knob, "savings": m.savings}
                    for m in methods]
    return EvalResult(settings=settings, methods=methods_info, dense=runner.dense_summary, rows=rows,
                      tensor=tensor, environment=_environment(device))


def _check_level(level) -> float:
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
        raise value_error("levels", level, "each target saving must be a number in (0, 1)", "pass e.g. 0.5 0.75")
    return float(level)


def _first_guess(method: Method, level, geometry, full_hist) -> Optional[float]:
    if level is None or method.knob is None:
        return None
    if full_hist:  # the knob of the previous level closest to this one
        return min(full_hist, key=lambda k: abs(full_hist[k] - level))
    if method.first_guess is not None and geometry is not None:
        return method.first_guess(level, geometry)
    return method.default_knob


def _tensor_guess(method: Method, err) -> Optional[float]:
    """The mean knob (geometric for log knobs) that matched the target on the captured calls."""
    knobs = [r["knob"] for r in (err or {}).get("per_call", []) if r["knob"] is not None and r["converged"]]
    if not knobs:
        return None
    if method.log_knob:
        return math.exp(sum(math.log(k) for k in knobs) / len(knobs))
    return sum(knobs) / len(knobs)


def _match(runner, method: Method, config, level, geometry, search_runs, tol, search_hist, full_hist, key,
           tensor_guess=None):
    """Search the knob on the search runs, confirm on all runs, refine on all runs if the confirmation
    misses. Returns ``(SearchResult | None, measurement on all runs)``."""
    if level is None:  # a method without a knob: measured once
        return None, runner.measure(method, config, None, len(runner.runs))
    guess = _first_guess(method, level, geometry, full_hist)
    if tensor_guess is not None and not any(abs(s - level) <= tol for s in full_hist.values()):
        guess = tensor_guess

    def savings_on(n):
        return lambda knob: runner.measure(method, config, knob, n)[key]

    common = dict(bounds=method.bounds, log_knob=method.log_knob, tol=tol, name=method.name, knob_name=method.knob,
                  integer=method.integer)
    full = len(runner.runs)
    if search_runs < full:
        found = match_savings(savings_on(search_runs), level, first_guess=guess,
                              history=search_hist, **common)
        full_hist.setdefault(found.knob, runner.measure(method, config, found.knob, full)[key])
        guess = found.knob
    found = match_savings(savings_on(full), level, first_guess=guess, history=full_hist, shape=search_hist, **common)
    return found, runner.measure(method, config, found.knob, full)


def _row(method: Method, level, found: Optional[SearchResult], m: Dict[str, Any], dense,
         key: str = "savings_reusing") -> Dict[str, Any]:
    row = {"method": method.name, "target": level, "matched_on": key, "knob_name": method.knob,
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
