"""The full-size speed part of docs/results.md: ``benchmarks/bench_peers_e2e.py`` blocks (one per model and
device call), their 50-step composition, the speed table, and which rows' memory a cache run before them
inflates."""

from __future__ import annotations

import json
import math
from pathlib import Path

CACHES = ("pab skip", "fbc skip", "taylorseer skip")
# full-size row -> the tiny-model method of the same setting (quality at 75%)
SAME_SETTING = {"channel (bundled θ)": "channel", "token 75% budget (chain)": "token-budget",
                "token 75% fidelity (README)": "token-fidelity", "svg 70% flex": "svg",
                "token 75% fidelity pooled (key share 0.7)": "token-fidelity-auto"}


def quality_vs_speed(main, e2e, level=0.75):
    """(model, method, tiny-model PSNR at ``level``, full-size composed speedup) for the settings run in both."""
    from _results_md import row_at

    out = []
    for res in e2e:
        for c in compose(res):
            r = row_at(main, SAME_SETTING.get(c["label"], ""), level)
            if r is not None and c["composed"] and isinstance(r["psnr_mean"], (int, float)):
                out.append((res["label"], SAME_SETTING[c["label"]], r["psnr_mean"], c["composed"]))
    return out


def _finite(x):
    return isinstance(x, (int, float)) and math.isfinite(x)


def after_cache(res):
    """Labels of the rows timed after a cache row in the same process: their peak memory includes what the
    cache left allocated, so it is not theirs."""
    out, seen = set(), False
    for r in res["rows"]:
        if seen:
            out.add(r["label"])
        seen = seen or (r["label"] in CACHES and isinstance(r.get("ms"), (int, float)) and math.isfinite(r["ms"]))
    return out


def compose(res):
    """Per row: step speedup, the 50-step figure composed from the schedule (dense steps at stock time; not for
    the caches, whose reusing steps follow their own schedule) and the ceiling."""
    rows = {r["label"]: r for r in res["rows"]}
    stock = rows["stock"]["ms"]
    free = rows.get("attention free", {}).get("ms", float("nan"))
    nd, nr = res["dense_steps"], 50 - res["dense_steps"]
    ceiling = 50 * stock / (nd * stock + nr * free)
    out = []
    for r in res["rows"]:
        ok = isinstance(r["ms"], (int, float)) and math.isfinite(r["ms"])
        composed = 50 * stock / (nd * stock + nr * r["ms"]) if ok and r["label"] not in CACHES else None
        theory = None
        if r.get("savings") is not None and math.isfinite(r["savings"]) and r["label"] not in CACHES and math.isfinite(free):
            step = stock - r["savings"] * (stock - free)  # the paper's estimate: attention time cut by the savings
            theory = 50 * stock / (nd * stock + nr * step)
        out.append(dict(r, step=stock / r["ms"] if ok else None, composed=composed, ceiling=ceiling, theory=theory))
    return out


def _x(value):
    """A speedup cell: ``1.23x``, or ``-`` where there is none."""
    from _results_md import f

    cell = f(value, ".2f")
    return cell if cell == "-" else f"{cell}x"


def e2e_table(results):
    from _results_md import f

    out = ["| model | variant | ms per step (timed) | peak memory over stock | step speedup | 50 steps, composed "
           "(timed) | 50 steps, from counted savings (the paper's estimate) | ceiling | counted savings | note |",
           "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for res in results:
        comp = compose(res)
        base = next((c.get("peak_gib") for c in comp if c["label"] == "stock"), None)
        after = after_cache(res)
        elsewhere = {r["label"]: o["call"] for o in results if o is not res and o["model"] == res["model"]
                     for r in o["rows"] if _finite(r.get("ms"))}
        for c in comp:
            if not _finite(c.get("ms")) and c["label"] in elsewhere:
                c = dict(c, note=f"{c.get('note', '')}; timed in {elsewhere[c['label']]}'s block")
            mem = "-" if c.get("peak_gib") is None or base is None else f"{c['peak_gib'] - base:+.1f} GiB"
            if mem != "-" and c["label"] in after:
                mem += " (after a cache row)"
            out.append(f"| {res['label']} | {c['label']} | {f(c['ms'], '.0f')} | {mem} | {_x(c['step'])} | "
                       f"{_x(c['composed'])} | {_x(c['theory'])} | {c['ceiling']:.2f}x | "
                       f"{f(c['savings'], '.1%')} | {c.get('note', '')} |")
        for k, why in res.get("not_timed", {}).items():
            out.append(f"| {res['label']} | {k} | | | | | | {comp[0]['ceiling']:.2f}x | | not timed: {why} |")
    return out


def _e2e_blocks(e2e_paths, calls):
    """The bench_peers_e2e.py blocks, each with the call it belongs to (the run folder holding its file)."""
    where = {folder.resolve(): meta["call"] for folder, meta in calls}
    out = []
    for p in map(Path, e2e_paths):
        if not p.is_file():
            continue
        call = where.get(p.resolve().parent, calls[0][1]["call"])  # a file outside the folders: the first call's
        for r in json.loads(p.read_text()):
            out.append(dict(r, source=r.get("source", p.stem), call=r.get("call") or call,
                            model_label=r.get("model_label", r["label"])))
    order = list(dict.fromkeys(r["model"] for r in out))
    out.sort(key=lambda r: order.index(r["model"]))  # a model's blocks together (stable: calls in order)
    labels = [r["model_label"] for r in out]
    for r in out:  # a model timed by two calls: each block keeps its own stock baseline
        r["label"] = f"{r['model_label']} ({r['call'] or r['source']})" if labels.count(r["model_label"]) > 1 \
            else r["model_label"]
    return out
