"""Join merged ``tools/peers_tables.py`` runs of several device calls into one result (for docs/results.md).

Every call runs the same settings (tiny model, prompts, seeds, steps, capture); a later call measures what an
earlier one did not reach. Rows keep the call they came from (``row["call"]``, 1-based) and its device
(``row["device"]``: ``"cuda"``, ``"cpu"``); a method and level measured by two calls is kept from the first.
A call may run on another device than the first (the settings checked below fix the videos; the quality
figures of the tiny model agree across devices up to float rounding), but timed figures of CPU rows are not
comparable with the GPU's and are not shown (:func:`timed_comparable`). A method is "not run" only if no
call measured it, with each call's reason. Settings that must agree between calls (the runs, steps, capture) are checked: joining runs
of different settings would compare videos that are not comparable.
"""

from __future__ import annotations

import json

SAME = ("pipeline", "config", "prompts", "seeds", "num_inference_steps", "guidance_scale", "reusing_steps",
        "capture_steps", "captured_layers", "tol")


def device_type(env):
    """``"cpu"`` or ``"cuda"`` (or another torch device type) of a run's ``environment``."""
    return str(env.get("device", "cpu")).split(":")[0]


def timed_comparable(row):
    """Whether a row's timed figures may be shown beside the GPU calls' (rows measured on a CPU: no; their
    quality figures are those of the same model and runs, equal up to float rounding)."""
    return row.get("device", "cuda") != "cpu"


def _level(x):
    lv = x.get("level", x.get("target"))
    return None if lv is None else round(lv, 9)


def join(results, labels=None):
    """One result dict from ``results`` (merged runs, oldest first; `None` entries are left out).

    ``labels`` name the calls (default ``call 1``, ``call 2``, ...); ``settings["calls"]`` lists, per call,
    its label, date, card, number of evaluation processes and the methods it measured.
    """
    given = [(k, r) for k, r in enumerate(results) if r]
    if not given:
        return None
    labels = list(labels or [f"call {k + 1}" for k in range(len(results))])
    first = json.loads(json.dumps(given[0][1]))
    for k, res in given[1:]:
        bad = [key for key in SAME if res["settings"].get(key) != first["settings"].get(key)]
        if bad:
            raise ValueError(f"runs: {labels[k]} differs from {labels[given[0][0]]} in {bad}; only runs of the same "
                             "settings can share a table (run the missing methods with the first call's settings)")
    rows, tensor, seen, tseen, methods, calls = [], [], set(), set(), {}, []
    for k, res in given:
        mine = []
        env = res["environment"]
        where = dict(device=device_type(env), device_name=env.get("device_name", env.get("device")))
        for r in res["rows"]:
            if (r["method"], _level(r)) not in seen:
                seen.add((r["method"], _level(r)))
                rows.append(dict(r, call=k + 1, **where))
                mine.append(r["method"])
        for e in res.get("tensor", []):
            if (e["method"], _level(e)) not in tseen:
                tseen.add((e["method"], _level(e)))
                tensor.append(dict(e, call=k + 1, **where))
        for m in res["methods"]:
            methods.setdefault(m["name"], m)
        calls.append({"call": labels[k], "index": k + 1, "date_utc": env.get("date_utc"), "device": where["device_name"],
                      "device_type": where["device"], "threads": env.get("threads"),
                      "workers": res["settings"].get("workers"), "methods": list(dict.fromkeys(mine)),
                      "dense_seconds_per_video": res["dense"].get("seconds_per_video")})
    measured = {r["method"] for r in rows}
    measured_at = {(r["method"], _level(r)) for r in rows}
    skipped, not_run = {}, {}
    for k, res in given:
        for part, out in (("skipped", skipped), ("not_run", not_run)):
            for m, why in (res["settings"].get(part) or {}).items():
                name, _, level = m.rpartition("@")  # a one-level job of a method no call measured: the method's
                if name and (name, round(float(level), 9)) in measured_at:
                    continue  # another call measured this method at this level
                if name and name not in measured:
                    m, why = name, f"{why} (at {float(level):.1%})"
                if m not in measured:
                    why = f"{labels[k]}: {why}" if len(given) > 1 else why  # one call: its reason as it is
                    out[m] = f"{out[m]}; {why}" if m in out else why
    not_run = {m: why for m, why in not_run.items() if m not in skipped}
    see_also = {m: t for _, res in given for m, t in (res.get("see_also") or {}).items() if m not in measured}
    for m, text in see_also.items():  # what a call's meta says about a method measured elsewhere
        if m in not_run:
            not_run[m] += f"; {text}"
    channel = {_level(e): e["mse"] for e in tensor if e["method"] == "channel"}
    for e in tensor:  # x channel across calls: the captured q/k/v are those of the same first run
        ref = channel.get(_level(e))
        e["mse_vs_channel"] = e["mse"] / ref if ref else None
    settings = dict(first["settings"], skipped=skipped, not_run=not_run, calls=calls, see_also=see_also,
                    levels=sorted({_level(r) for r in rows if _level(r) is not None})
                    or first["settings"]["levels"])  # the rows' levels (a cache's targets are whole-run savings)
    return dict(first, settings=settings, methods=[m for m in methods.values() if m["name"] in measured],
                rows=rows, tensor=tensor)
