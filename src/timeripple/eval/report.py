"""[`EvalResult`]: what ``timeripple eval`` measured, as JSON, a markdown table and plots.

Every figure says what it is: savings are **counted** (each method's own unit, on the reusing steps and
over the whole generation) and always the achieved ones; wall-clock seconds are **timed** on the run's
device (synchronised on CUDA; dense timed in the same process); PSNR / SSIM compare each video with the
dense video of the same prompt and seed; attention MSE is measured on q/k/v captured from the pipeline.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional

__all__ = ["EvalResult"]

UNREACHED = "†"  # marks a cell whose target was not reached (the achieved savings are shown)


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _db(value: Optional[float]) -> str:
    if value is None:
        return "-"
    return "inf" if math.isinf(value) else f"{value:.1f}"


def _pct(value: Optional[float], digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}%}"


def _sci(value: Optional[float]) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2e}"


@dataclasses.dataclass
class EvalResult:
    r"""
    The measurements of one [`~timeripple.eval.evaluate`] call.

    Args:
        settings (`dict`): pipeline, config, prompts, seeds, steps, levels, tolerance, reusing steps, captured calls.
        methods (`list[dict]`): name, description, knob and savings unit of every method evaluated.
        dense (`dict`): ``seconds_per_video`` (timed) and the dense videos' adherence.
        rows (`list[dict]`): one per (method, target): ``knob``, ``savings_reusing`` / ``savings_total``
            (counted, achieved), ``psnr_mean`` / ``psnr_min`` / ``psnr`` per run, ``ssim_mean``,
            ``seconds_per_video`` and ``speedup_timed``, ``adherence``, ``step_error`` (latent RMSE vs the
            dense trajectory after each step), ``converged`` / ``reachable`` / ``message``, ``search``.
        tensor (`list[dict]`): one per (method, target): ``mse`` (attention output vs exact, mean over the
            captured calls, savings matched per call), ``mse_vs_channel``, ``savings``, ``per_step``, ``per_call``.
        environment (`dict`): versions, device, date.
    """

    settings: Dict[str, Any]
    methods: List[Dict[str, Any]]
    dense: Dict[str, Any]
    rows: List[Dict[str, Any]]
    tensor: List[Dict[str, Any]]
    environment: Dict[str, Any]

    def row(self, method: str, target: Optional[float]) -> Dict[str, Any]:
        for row in self.rows:
            if row["method"] == method and row["target"] == target:
                return row
        raise KeyError((method, target))

    def tensor_entry(self, method: str, target: Optional[float]) -> Optional[Dict[str, Any]]:
        return next((e for e in self.tensor if e["method"] == method and e["target"] == target), None)

    def to_dict(self) -> Dict[str, Any]:
        return _json_safe(dataclasses.asdict(self))

    # -- markdown ----------------------------------------------------------------------------------

    def markdown(self) -> str:
        """The summary table (PSNR per method and level), the full table, and the settings."""
        s, levels = self.settings, self.settings["levels"]
        key = f"savings_{s.get('match_on', 'reusing')}"
        where = "on the reusing steps" if key == "savings_reusing" else "over the whole generation"
        names = [m["name"] for m in self.methods]
        lines = [
            f"# timeripple eval: {s['pipeline']}, config `{s['config']}`",
            "",
            f"{s['runs']} runs ({len(s['prompts'])} prompts x seeds {s['seeds']}), {s['num_inference_steps']} steps, "
            f"guidance {s['guidance_scale']}, device {s['device']}; reusing steps {s['reusing_steps']}. "
            f"Savings are counted {where} and matched to each target within ±{s['tol']:.1%} "
            f"(achieved shown); {UNREACHED} = target not reached.",
            "",
            f"## Mean PSNR vs dense (dB) at the achieved savings {where}",
            "",
            "| method (savings unit) | " + " | ".join(f"{t:.1%}" for t in levels) + " |",
            "| --- | " + " | ".join("---:" for _ in levels) + " |",
        ]
        for m in self.methods:
            cells = []
            for t in (levels if m["knob"] is not None else [None]):
                r = self.row(m["name"], t)
                mark = "" if r["converged"] else f" {UNREACHED}"
                cells.append(f"{_db(r['psnr_mean'])} ({_pct(r[key])}){mark}")
            if m["knob"] is None:
                cells = [cells[0]] + ["" for _ in levels[1:]]
            lines.append(f"| {m['name']} ({m['savings']}) | " + " | ".join(cells) + " |")
        if self.tensor:
            lines += ["", "## Attention-output MSE vs exact attention (captured q/k/v, savings matched per call)", "",
                      "| method | " + " | ".join(f"{t:.1%}" for t in levels) + " |",
                      "| --- | " + " | ".join("---:" for _ in levels) + " |"]
            for name in names:
                cells = []
                for t in levels:
                    e = self.tensor_entry(name, t)
                    if e is None:
                        cells.append("-")
                        continue
                    ratio = "" if e.get("mse_vs_channel") is None else f", {e['mse_vs_channel']:.3g}x channel"
                    mark = "" if e["all_converged"] else f" {UNREACHED}"
                    cells.append(f"{_sci(e['mse'])} ({_pct(e['savings'])}{ratio}){mark}")
                if any(c != "-" for c in cells):
                    lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines += ["", "## All measurements", "",
                  "| method | target | knob | savings reusing | savings total | PSNR mean | PSNR min | SSIM | "
                  "s / video (timed) | speedup (timed) | adherence c/s/d (lost) |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        for r in self.rows:
            adh = r.get("adherence")
            adh_text = "-" if not adh else "/".join(_pct(adh[c], 0) for c in ("colour", "shape", "direction")) + \
                " (" + "/".join(str(adh["lost"][c]) for c in ("colour", "shape", "direction")) + ")"
            knob = "-" if r["knob"] is None else f"{r['knob_name']} {r['knob']:.4g}"
            lines.append(
                f"| {r['method']} | {_pct(r['target'])} | {knob} | {_pct(r['savings_reusing'], 2)} | "
                f"{_pct(r['savings_total'], 2)} | {_db(r['psnr_mean'])} | {_db(r['psnr_min'])} | {r['ssim_mean']:.3f} | "
                f"{r['seconds_per_video']:.2f} | {r['speedup_timed']:.2f}x | {adh_text} |")
        dense_adh = self.dense.get("adherence")
        lines += ["", f"Dense: {self.dense['seconds_per_video']:.2f} s per video (timed, {s['device']})"
                  + ("" if not dense_adh else ", adherence colour/shape/direction "
                     + "/".join(_pct(dense_adh[c], 0) for c in ("colour", "shape", "direction"))) + "."]
        notes = [r["message"] for r in self.rows if r["message"]]
        notes += [m for e in self.tensor for m in e.get("messages", [])[:1]]
        if notes:
            lines += ["", "Targets not reached:", ""] + [f"- {n}" for n in notes]
        lines += ["", "Methods:", ""] + [f"- `{m['name']}`: {m['description']} (knob: {m['knob']}; savings: "
                                         f"{m['savings']})" for m in self.methods]
        env = self.environment
        lines += ["", f"timeripple {env['timeripple']}, torch {env['torch']}, diffusers {env['diffusers']}, "
                  f"{env.get('device_name', env['device'])}, {env['date_utc']} UTC."]
        return "\n".join(lines) + "\n"

    # -- files -------------------------------------------------------------------------------------

    def save(self, folder) -> Dict[str, Path]:
        """Write ``results.json``, ``results.md`` and (with matplotlib) ``quality_vs_savings.png``,
        ``per_step_error.png``, ``attention_mse.png`` into ``folder``; returns the paths."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        files = {"json": folder / "results.json", "markdown": folder / "results.md"}
        files["json"].write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        files["markdown"].write_text(self.markdown())
        from .plots import plot_all

        files.update(plot_all(self, folder))
        return files
