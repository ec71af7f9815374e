"""Plots of an [`EvalResult`] (matplotlib, Agg backend): quality vs savings per method, per-step error,
attention-output MSE vs savings."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Dict

logger = logging.getLogger(__name__)

__all__ = ["plot_all"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_all(result, folder: Path) -> Dict[str, Path]:
    """Write every plot that has data; returns ``{name: path}`` (empty without matplotlib, with a warning)."""
    try:
        plt = _pyplot()
    except ImportError as err:
        logger.warning("no plots: matplotlib is not installed (%s); `pip install matplotlib`", err)
        return {}
    files = {"quality_plot": folder / "quality_vs_savings.png"}
    _quality(plt, result, files["quality_plot"])
    if any(r.get("step_error") for r in result.rows) or result.tensor:
        files["per_step_plot"] = folder / "per_step_error.png"
        _per_step(plt, result, files["per_step_plot"])
    if result.tensor:
        files["attention_plot"] = folder / "attention_mse.png"
        _attention(plt, result, files["attention_plot"])
    return files


def _quality(plt, result, path: Path) -> None:
    key = f"savings_{result.settings.get('match_on', 'reusing')}"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for m in result.methods:
        rows = sorted((r for r in result.rows if r["method"] == m["name"]), key=lambda r: r[key])
        x = [100 * r[key] for r in rows]
        finite = [r["psnr_mean"] if math.isfinite(r["psnr_mean"]) else float("nan") for r in rows]
        (line,) = axes[0].plot(x, finite, "o-", label=m["name"])
        axes[1].plot(x, [r["ssim_mean"] for r in rows], "o-", color=line.get_color(), label=m["name"])
        for r, xi, yi in zip(rows, x, finite):
            if not r["converged"]:
                axes[0].annotate("†", (xi, yi), textcoords="offset points", xytext=(4, 4))
    for ax, label in zip(axes, ("mean PSNR vs dense (dB)", "mean SSIM vs dense")):
        ax.set_xlabel("achieved savings, " + ("reusing steps" if key == "savings_reusing" else "whole generation")
                      + " (%, counted)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    s = result.settings
    fig.suptitle(f"{s['pipeline']}: {s['runs']} runs, {s['num_inference_steps']} steps, config {s['config']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _per_step(plt, result, path: Path) -> None:
    levels = result.settings["levels"]
    has_video = any(r.get("step_error") for r in result.rows)
    panels = len(levels) if has_video else 0
    panels += 1 if result.tensor else 0
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.8), squeeze=False)
    axes = axes[0]
    reusing = result.settings["reusing_steps"]
    if has_video:
        for ax, level in zip(axes, levels):
            for m in result.methods:
                r = next((r for r in result.rows if r["method"] == m["name"] and r["target"] in (level, None)), None)
                if r and r.get("step_error"):
                    ax.semilogy(range(len(r["step_error"])), [max(e, 1e-12) for e in r["step_error"]], label=m["name"])
            ax.axvspan(min(reusing) - 0.5, max(reusing) + 0.5, color="gray", alpha=0.1)
            ax.set_title(f"latent RMSE vs dense trajectory, {level:.1%}", fontsize=9)
            ax.set_xlabel("step (shaded: reusing steps)")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
    if result.tensor:
        ax = axes[-1]
        for m in result.methods:
            for e in (e for e in result.tensor if e["method"] == m["name"]):
                steps = sorted(e["per_step"], key=int)
                label = f"{m['name']} {e['target']:.0%}" if e["target"] is not None else m["name"]
                ax.semilogy([int(s) for s in steps], [max(e["per_step"][s], 1e-16) for s in steps], "o-",
                            label=label, alpha=0.8)
        ax.set_title("attention-output MSE per captured step", fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _attention(plt, result, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for m in result.methods:
        entries = sorted((e for e in result.tensor if e["method"] == m["name"]), key=lambda e: e["savings"])
        if entries:
            ax.semilogy([100 * e["savings"] for e in entries], [max(e["mse"], 1e-16) for e in entries], "o-",
                        label=m["name"])
    ax.set_xlabel("achieved savings per call (%, counted)")
    ax.set_ylabel("attention-output MSE vs exact")
    ax.set_title("captured self-attention calls (Fig. 7 style)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
