"""Render docs/results.md and docs/eval_results.md from a merged ``tools/peers_tables.py`` run (and the JSON
of ``benchmarks/bench_peers_e2e.py``). The verdicts on the paper's claims are computed here from the figures."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from _results_claims import claims
from _results_e2e import _e2e_blocks, compose, e2e_table, quality_vs_speed
from _results_join import timed_comparable

FAMILIES = (  # (heading, methods in order); methods of none of these go to "other"
    ("TimeRipple, channel mode (the paper)", ("channel",)),
    ("TimeRipple, token mode", ("token-strict", "token-budget", "token-rms")),
    ("TimeRipple, token plans of issue 9 (fidelity)", ()),  # filled with every method named token-* not above
    ("Attention peers (written here from their papers)", ("svg", "minference", "tr-svg")),
    ("diffusers caches and Δ-DiT (whole-run matching)", ("pab", "fbc", "magcache", "taylorseer", "delta-dit")),
    ("TimeRipple with a diffusers cache", ("tr+pab", "tr+fbc")),
    ("Fig. 7 baselines", ("magnitude", "skip")),
)
ABLATIONS = ("channel", "channel-fixed", "channel-temporal", "channel-w3", "channel-w4", "channel-w8", "channel-alpha",
             "channel-w3-same", "channel-w4-same", "channel-w8-same")


def load(folder):
    path = Path(folder) / "results.json"
    return json.loads(path.read_text()) if path.is_file() else None


def f(x, fmt):
    if x is None or (isinstance(x, str) and x not in ("inf", "-inf")):
        return "-"
    x = float(x)
    if math.isnan(x):
        return "-"
    return "inf" if math.isinf(x) else format(x, fmt)


def families(res):
    names = list(dict.fromkeys(r["method"] for r in res["rows"]))
    named = {m for _, ms in FAMILIES for m in ms}
    out = []
    for title, ms in FAMILIES:
        if not ms:
            ms = tuple(m for m in names if m.startswith("token-") and m not in named)
            named |= set(ms)
        out.append((title, [m for m in ms if m in names]))
    rest = [m for m in names if m not in named]
    return out + ([("Other registered methods", rest)] if rest else [])


def rows_of(res, method):
    return sorted((r for r in res["rows"] if r["method"] == method), key=lambda r: r.get("level") or 0)


def row_at(res, method, level):
    return next((r for r in res["rows"] if r["method"] == method and _same(r.get("level", r["target"]), level)), None)


def tensor_at(res, method, level):
    return next((e for e in res.get("tensor", []) if e["method"] == method and _same(e.get("level", e["target"]), level)),
                None)


def _same(a, b):
    return (a is None and b is None) or (a is not None and b is not None and abs(a - b) < 1e-9)


def _adh(row):
    a = row.get("adherence") or {}
    lost = a.get("lost") or {}
    return "-" if not a else f"{f(a.get('all'), '.0%')} ({lost.get('colour', 0)}/{lost.get('shape', 0)}/{lost.get('direction', 0)})"


def _matched(row):
    if row.get("target") is None:
        return "no knob"
    where = "reusing steps" if row.get("matched_on", "savings_reusing") == "savings_reusing" else "whole run"
    return f"{row['target']:.1%} {where}"


def _timed(row):
    if not timed_comparable(row):
        return "not shown (CPU)"
    return f"{f(row.get('speedup_timed'), '.2f')}x"


def _suspect(x):
    """`` ‡`` on a row (or tensor entry) that its call's meta.json marks as suspect (``suspect``: a known defect)."""
    return " ‡" if x.get("suspect") else ""


def _named(key):
    """``"method@level"`` (a meta.json key) -> ``(method, level)``."""
    name, _, level = key.rpartition("@")
    return name, float(level)


def _is(x, name, level):
    return x["method"] == name and _same(x.get("level", x.get("target")), level)


def mark_suspect(res, suspect):
    """Mark the rows and tensor entries of one call named in its meta.json's ``suspect`` (``{"method@level":
    why}``); the mark and the reason travel with the row through the join."""
    for key, why in (suspect or {}).items():
        for x in res["rows"] + res.get("tensor", []):
            if _is(x, *_named(key)):
                x["suspect"] = why


def withdraw_e2e(e2e, calls):
    """Copies of the speed blocks without the rows that their call's meta.json withdraws (``e2e_withdrawn``:
    ``{"<model label>|<row>": why}``, a timing that measured a defect of ours rather than the method): each is
    listed as not timed, with its old figure and why, and no table, plot or verdict uses it."""
    withdrawn = {meta["call"]: meta.get("e2e_withdrawn") or {} for _, meta in calls}
    out = []
    for res in e2e:
        gone = withdrawn.get(res["call"], {})
        if not any(key.split("|")[0] == res["model_label"] for key in gone):
            out.append(res)
            continue
        res = json.loads(json.dumps(res))
        keep = []
        for r in res["rows"]:
            why = gone.get(f"{res['model_label']}|{r['label']}")
            if why is None:
                keep.append(r)
            else:
                was = f"{r['ms']:.0f} ms a step" if isinstance(r.get("ms"), (int, float)) else "its figure"
                res.setdefault("not_timed", {})[r["label"]] = f"withdrawn ({was} in {res['call']}): {why}"
        res["rows"] = keep
        out.append(res)
    return out


def drop_superseded(res, superseded, call, later):
    """A copy of one call's result without the rows and tensor entries named in its meta.json's ``superseded``
    (``{"method@level": why}``: figures of a defect since fixed) that a later call re-measured (``later``: the
    later calls' results), so that the join takes the later call's; the raw figures stay in the call's stored
    JSON. Returns ``(copy, dropped)`` with one ``{"method", "level", "call", "psnr_mean", "why"}`` per dropped row."""
    wanted = [(*_named(key), why) for key, why in (superseded or {}).items()]
    wanted = [(n, lv, why) for n, lv, why in wanted if any(_is(r, n, lv) for x in later if x for r in x["rows"])]
    if not res or not wanted:
        return res, []
    res, dropped = json.loads(json.dumps(res)), []
    for name, level, why in wanted:
        dropped += [dict(method=name, level=level, call=call, psnr_mean=r.get("psnr_mean"), why=why)
                    for r in res["rows"] if _is(r, name, level)]
        res["rows"] = [r for r in res["rows"] if not _is(r, name, level)]
        res["tensor"] = [e for e in res.get("tensor", []) if not _is(e, name, level)]
    return res, dropped


def quality_table(res, methods):
    out = ["| method | level | matched on (target) | knob | savings, reusing steps | savings, whole run | "
           "PSNR mean (min) dB | SSIM | adherence all (lost c/s/d) | timed speedup (tiny model) | call |",
           "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |"]
    for m in methods:
        for r in rows_of(res, m):
            mark = "" if r.get("converged", True) else " †"
            knob = "-" if r.get("knob") is None else f"{r['knob_name']} {r['knob']:.4g}"
            out.append(f"| {m} | {f(r.get('level'), '.1%')} | {_matched(r)} | {knob} | {f(r['savings_reusing'], '.1%')} | "
                       f"{f(r['savings_total'], '.1%')}{mark} | {f(r['psnr_mean'], '.1f')} ({f(r['psnr_min'], '.1f')}){_suspect(r)} | "
                       f"{f(r['ssim_mean'], '.3f')} | {_adh(r)} | {_timed(r)} | {r.get('call', 1)} |")
    return out


def summary_table(res, levels, with_mse=False):
    """Method x level: PSNR / SSIM at the achieved savings (issue 9's table shape)."""
    head = "| method (savings unit) | " + " | ".join(f"{lv:.1%}" for lv in levels) + " |"
    out = [head, "| --- |" + " ---: |" * len(levels)]
    units = {m["name"]: m["savings"] for m in res["methods"]}
    for _, ms in families(res):
        for m in ms:
            cells = []
            for lv in levels:
                r = row_at(res, m, lv)
                if r is None:
                    cells.append("-")
                    continue
                mark = "" if r.get("converged", True) else " †"
                sav = r["savings_reusing"] if r.get("matched_on", "savings_reusing") == "savings_reusing" else r["savings_total"]
                where = "" if r.get("matched_on", "savings_reusing") == "savings_reusing" else " whole run"
                cell = f"{f(r['psnr_mean'], '.1f')} dB / {f(r['ssim_mean'], '.3f')} ({f(sav, '.1%')}{where}){mark}{_suspect(r)}"
                e = tensor_at(res, m, lv) if with_mse else None
                if e is not None:
                    cell += f"; MSE {f(e['mse'], '.2e')}"
                cells.append(cell)
            if any(c != "-" for c in cells):
                out.append(f"| {m} ({units.get(m, '')}) | " + " | ".join(cells) + " |")
    return out


def tensor_table(res, levels):
    out = ["| method | " + " | ".join(f"{lv:.1%}: MSE (x channel, savings per call)" for lv in levels) + " |",
           "| --- |" + " ---: |" * len(levels)]
    for _, ms in families(res):
        for m in ms:
            cells = []
            for lv in levels:
                e = tensor_at(res, m, lv)
                cells.append("-" if e is None else f"{f(e['mse'], '.2e')} ({f(e.get('mse_vs_channel'), '.3g')}x, "
                             f"{f(e['savings'], '.1%')}){'' if e.get('all_converged', True) else ' †'}{_suspect(e)}")
            if any(c != "-" for c in cells):
                out.append(f"| {m} | " + " | ".join(cells) + " |")
    return out


def not_in_table(res, registry=True):
    s = res["settings"]
    lines = [f"- `{m}`: could not run: {why}" for m, why in (s.get("skipped") or {}).items()]
    lines += [f"- `{m}`: not measured: {why}" for m, why in (s.get("not_run") or {}).items()]
    if registry:  # registered since the run (not in its job list)
        try:
            from timeripple.eval import list_methods
            from timeripple.eval.ablation_methods import ABLATION_METHODS
        except ImportError:
            list_methods, ABLATION_METHODS = (lambda: []), ()
        known = {r["method"] for r in res["rows"]} | set(s.get("skipped") or {}) | set(s.get("not_run") or {})
        also = s.get("see_also") or {}
        lines += [f"- `{m}`: not measured: registered after this run (not in its job list)"
                  + (f"; {also[m]}" if m in also else "") for m in list_methods() if m not in known
                  and m not in ABLATION_METHODS]
    return lines or ["None: every registered method ran."]


def settings_line(res):
    s, env = res["settings"], res["environment"]
    return (f"{s['pipeline']} (the shipped tiny model), config `{s['config']}` (reusing steps {s['reusing_steps'][0]}-"
            f"{s['reusing_steps'][-1]} of {s['num_inference_steps']}), {len(s['prompts'])} prompts "
            f"(`timeripple.eval.EVAL_PROMPTS`) x seeds {s['seeds']} = {s['runs']} runs, {s['num_inference_steps']} steps, "
            f"guidance {s['guidance_scale']}, {s['batch_size']} runs per pipeline call, tolerance ±{s['tol']:.1%}; "
            f"{env.get('device_name', env['device'])}, torch {env['torch']}, diffusers {env['diffusers']}, "
            f"timeripple {env['timeripple']}, {env['date_utc']} UTC")


def plots(main, e2e, figs: Path, run: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs.mkdir(parents=True, exist_ok=True)
    made = {}
    for key, label, name in (("savings_total", "counted savings over the whole run (%)", "gpu_psnr_vs_savings.png"),
                             ("speedup_timed", "timed speedup vs dense, tiny model on the GPU (x)",
                              "gpu_psnr_vs_speedup.png")):
        fig, ax = plt.subplots(figsize=(8, 5))
        for title, ms in families(main):
            for m in ms:
                pts = sorted((float(r[key]) * (100 if key == "savings_total" else 1), r["psnr_mean"])
                             for r in main["rows"] if r["method"] == m and r.get(key) is not None
                             and (key != "speedup_timed" or timed_comparable(r))
                             and isinstance(r["psnr_mean"], (int, float)) and math.isfinite(r["psnr_mean"]))
                if pts:
                    ax.plot(*zip(*pts), marker="o", ms=4, lw=1, label=m)
        ax.set_xlabel(label)
        ax.set_ylabel("mean PSNR vs dense (dB)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
        fig.tight_layout()
        fig.savefig(figs / name, dpi=110)
        plt.close(fig)
        made[key] = name
    if main.get("tensor"):  # the harness's plot, drawn from the joined figures of every call
        try:
            import tempfile

            from timeripple.eval import EvalResult
            from timeripple.eval.plots import plot_all
        except ImportError:  # without timeripple on the path: keep the plot copied earlier
            pass
        else:
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    plot_all(EvalResult(settings=main["settings"], methods=main["methods"], dense=main["dense"],
                                        rows=main["rows"], tensor=main["tensor"], environment=main["environment"]),
                             Path(tmp))
                except KeyError as err:  # figures without the harness's per-step / per-call fields
                    print(f"attention MSE plot not redrawn: the figures lack {err}")
                if (Path(tmp) / "attention_mse.png").is_file():
                    shutil.copy(Path(tmp) / "attention_mse.png", figs / "gpu_attention_mse.png")
    if (figs / "gpu_attention_mse.png").is_file():  # the harness's plot, copied from the run
        made["mse"] = "gpu_attention_mse.png"
    if e2e:
        fig, axes = plt.subplots(1, len(e2e), figsize=(6 * len(e2e), 4), squeeze=False)
        for ax, res in zip(axes[0], e2e):
            comp = compose(res)
            names = [c["label"] for c in comp if c["composed"] is not None]
            ax.barh(names, [c["composed"] for c in comp if c["composed"] is not None])
            ax.axvline(comp[0]["ceiling"], color="k", ls="--", lw=1, label="ceiling (attention free)")
            ax.set_title(f"{res['label']}: 50 steps composed ({res['card']})", fontsize=8)
            ax.set_xlabel("speedup vs stock (timed steps, composed)")
            ax.legend(fontsize=7)
            ax.tick_params(labelsize=7)
        fig.tight_layout()
        fig.savefig(figs / "e2e_speedup.png", dpi=110)
        plt.close(fig)
        made["e2e"] = "e2e_speedup.png"
        pts = quality_vs_speed(main, e2e) if main else []
        if pts:
            fig, ax = plt.subplots(figsize=(7, 4.5))
            for model in dict.fromkeys(p[0] for p in pts):
                mine = [p for p in pts if p[0] == model]
                ax.scatter([p[3] for p in mine], [p[2] for p in mine], label=model)
                for p in mine:
                    ax.annotate(p[1], (p[3], p[2]), fontsize=7, xytext=(3, 3), textcoords="offset points")
            ax.set_xlabel("timed speedup, 50 steps composed (full-size random-weight transformer)")
            ax.set_ylabel("mean PSNR vs dense at 75%, tiny model (dB)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
            fig.tight_layout()
            fig.savefig(figs / "quality_vs_speed.png", dpi=110)
            plt.close(fig)
            made["qs"] = "quality_vs_speed.png"
    return made


def _slim(res):
    """A copy small enough to commit: per-run adherence details and per-call knobs dropped."""
    res = json.loads(json.dumps(res))
    res["dense"].pop("adherence_per_run", None)
    for r in res["rows"]:
        (r.get("adherence") or {}).pop("per_run", None)
        r.pop("suspect", None)  # meta.json's mark, not a figure of the run
    for e in res.get("tensor", []):
        e.pop("per_call", None)
        e.pop("suspect", None)
    return res


def _calls(runs):
    """Per run folder: (folder, meta) with the call's label (meta.json's ``call``, else ``call k``)."""
    out = []
    for k, run in enumerate(runs):
        meta_file = Path(run) / "meta.json"  # the command and note of the call, kept with its JSON
        meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
        out.append((Path(run), dict(meta, call=meta.get("call") or f"call {k + 1}")))
    return out


def render(runs, out_path, eval_out, e2e_paths=(), command="", note=""):
    """Render the pages from merged run folders (one per device call, oldest first; a single folder also works).

    ``command`` / ``note`` override the (single or first) call's meta.json.
    """
    from _results_join import join
    from _results_text import calls_lines, commands_section, eval_page, intro, limits

    runs = [runs] if isinstance(runs, (str, Path)) else list(runs)
    calls = _calls(runs)
    if command or note:
        calls[0] = (calls[0][0], dict(calls[0][1], command=command or calls[0][1].get("command", ""),
                                      note=note or calls[0][1].get("note", "")))
    labels = [meta["call"] for _, meta in calls]
    parts = {part: [load(folder / part) for folder, _ in calls] for part in ("main", "ablation")}
    for part in parts.values():  # meta.json's ``see_also``: where a method not measured here was measured
        for res, (_, meta) in zip(part, calls):
            if res and meta.get("see_also"):
                res["see_also"] = meta["see_also"]
            if res:
                mark_suspect(res, meta.get("suspect"))
    joined = {}
    for part, results in parts.items():  # meta.json's ``superseded``: left to a later call's figures
        done = [drop_superseded(res, meta.get("superseded"), meta["call"], results[k + 1:])
                for k, (res, (_, meta)) in enumerate(zip(results, calls))]
        joined[part] = join([kept for kept, _ in done], labels)
        if joined[part]:
            joined[part]["settings"]["superseded"] = [d for _, dropped in done for d in dropped]
    main, abl = joined["main"], joined["ablation"]
    e2e = _e2e_blocks(e2e_paths, calls)
    out_path = Path(out_path)
    figs = out_path.parent / "results"
    for (folder, meta), part_main, part_abl in zip(calls, parts["main"], parts["ablation"]):
        store = figs / "runs" / folder.name  # the raw figures of each call, slimmed, beside the page
        for part, res in (("main", part_main), ("ablation", part_abl)):
            if res:
                (store / part).mkdir(parents=True, exist_ok=True)
                (store / part / "results.json").write_text(json.dumps(_slim(res), indent=1) + "\n")
        mine = [{k: (r["model_label"] if k == "label" else v) for k, v in r.items() if k not in ("call", "model_label")}
                for r in e2e if r["call"] == meta["call"]]
        if mine:
            (store / "e2e.json").write_text(json.dumps(mine, indent=1) + "\n")
        store.mkdir(parents=True, exist_ok=True)
        (store / "meta.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
    e2e = withdraw_e2e(e2e, calls)  # after the raw figures are stored: withdrawn rows stay in them
    run = calls[0][0]
    made = plots(main, e2e, figs, run) if main else {}
    levels = main["settings"]["levels"] if main else []
    lines = intro(main, e2e, [meta for _, meta in calls])
    verdicts = claims(main, abl, e2e, compose)
    counts = {v: sum(1 for _, x, _ in verdicts if x == v) for v in ("supported", "not supported", "not measurable here")}
    lines += [f"**Verdicts on the paper's claims** (table at the end): {counts['supported']} supported, "
              f"{counts['not supported']} not supported, {counts['not measurable here']} not measurable here.", ""]
    if main:
        lines += ["## Tbl. 2 on the tiny model: every method at matched savings", "", settings_line(main) + ".", ""]
        lines += (["The device calls (same settings; column `call` of the tables below):", ""] + calls_lines(main)
                  + [""] if main["settings"].get("calls") else [])
        lines += [
                  "PSNR / SSIM at each level (achieved savings in brackets; caches at the whole-run savings "
                  "that the config's schedule gives at that level):", ""]
        lines += summary_table(main, levels) + [""]
        lines += ["Every row, by family (the knob found, both savings figures, adherence, and the tiny model's "
                  "timed speedup):", ""]
        for title, ms in families(main):
            if ms:
                lines += [f"**{title}**", ""] + quality_table(main, ms) + [""]
        lines += ["Methods not in the table:", ""] + not_in_table(main) + [""]
        lines += ["![PSNR vs counted savings](results/" + made["savings_total"] + ") "
                  "![PSNR vs timed speedup](results/" + made["speedup_timed"] + ")", ""]
        lines += ["## Fig. 7: attention-output MSE on captured q/k/v", "",
                  f"q/k/v of {len(main['settings']['captured_calls'])} self-attention calls (steps "
                  f"{main['settings']['capture_steps']}, layers {main['settings']['captured_layers']}) of the first run, "
                  "each method's knob matched per call; only methods that run inside attention have a figure "
                  "(caches skip whole calls).", ""] + tensor_table(main, levels) + [""]
        if "mse" in made:
            lines += [f"![attention MSE vs savings](results/{made['mse']})", ""]
    if abl:
        lv = abl["settings"]["levels"][0]
        lines += [f"## Tbl. 3, Fig. 11, Tbl. 4: ablations of channel mode at {lv:.0%} on the reusing steps", "",
                  settings_line(abl) + ".", "", "`channel-wK-same` runs window K at window 2's matched threshold, as "
                  "the paper's Fig. 11 does; `channel-wK` matches the savings instead."
                  + (" A later call does not re-run `channel`: its `channel-wK-same` rows use the threshold scale of "
                     "the first call's `channel` row." if len(abl["settings"].get("calls") or []) > 1 else ""), ""]
        lines += quality_table(abl, [m for m in ABLATIONS if any(r["method"] == m for r in abl["rows"])]) + [""]
        lines += ["Not run:", ""] + not_in_table(abl, registry=False) + [""]
    if e2e:
        lines += ["## Speed on full-size random-weight transformers (`benchmarks/bench_peers_e2e.py`)", "",
                  f"{e2e[0]['card']}, torch {e2e[0]['torch']}, {e2e[0]['date']}; bf16, batch 1, random weights at the "
                  "real configs (the speed issue's `bench_e2e.py` builder and timer); one forward per variant at a "
                  "reusing step, median of the repeats after one warm-up (repeats per model in the commands). "
                  "50 steps composed from the bundled schedule: its dense steps at stock time, the rest at the "
                  "variant's time. The counted-savings column is the paper's own estimate (attention time cut in "
                  "proportion to the savings). Caches: the time of one *reusing* step; how many steps reuse depends "
                  "on the cache's schedule, so no 50-step figure.", ""] + e2e_table(e2e) + [""]
        if "e2e" in made:
            lines += [f"![50-step speedups](results/{made['e2e']})", ""]
        if "qs" in made:
            lines += ["Quality against speed for the settings run on both (quality: the tiny model at 75%; speed: "
                      "the full-size transformers, 50 steps composed; `svg` at 70% sparsity there):", "",
                      f"![quality vs speed](results/{made['qs']})", ""]
    lines += ["## The paper's claims against these measurements", "",
              "| claim (paper) | verdict | what we measured |", "| --- | --- | --- |"]
    lines += [f"| {c} | **{v}** | {e} |" for c, v, e in verdicts] + [""]
    lines += limits(main, abl, e2e) + commands_section([meta for _, meta in calls], runs, e2e_paths)
    out_path.write_text("\n".join(lines) + "\n")
    if main and eval_out:
        Path(eval_out).write_text("\n".join(eval_page(main, levels, summary_table, tensor_table, settings_line,
                                                      not_in_table, row_at, tensor_at)
                                            + [""] + [f"{m['call']}: {m['note']}" for _, m in calls if m.get("note")])
                                  + "\n")
    return out_path
