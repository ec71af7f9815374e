"""tools/peers_tables.py's merge and render (docs/results.md): the verdicts follow the figures, every row says
what it matched, and a method that could not run or was not reached is listed, never dropped."""

import importlib
import json
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[1] / "tools"


@pytest.fixture()
def tools(monkeypatch):
    monkeypatch.syspath_prepend(str(TOOLS))
    for name in ("_results_md", "_results_claims", "_results_text", "_results_e2e", "_results_join", "peers_tables"):
        sys.modules.pop(name, None)
    return importlib.import_module("_results_md"), importlib.import_module("peers_tables")


def _row(method, level, psnr, *, ssim=0.9, total=None, matched="savings_reusing", converged=True, knob=1.0):
    target = level if matched == "savings_reusing" else level * 0.75
    return {"method": method, "target": target, "level": level, "matched_on": matched, "knob_name": "k", "knob": knob,
            "savings_reusing": level if matched == "savings_reusing" else target,
            "savings_total": total if total is not None else level * 0.75, "psnr_mean": psnr, "psnr_min": psnr - 3,
            "ssim_mean": ssim, "converged": converged, "speedup_timed": 0.9,
            "adherence": {"all": 1.0, "lost": {"colour": 0, "shape": 0, "direction": 0}}}


def _tensor(method, level, mse):
    return {"method": method, "target": level, "level": level, "mse": mse, "savings": level, "all_converged": True,
            "mse_vs_channel": None}


def _result(rows, tensor, levels, skipped=None, not_run=None):
    methods = [{"name": m, "description": m, "knob": "k", "savings": "units"} for m in dict.fromkeys(r["method"] for r in rows)]
    settings = {"pipeline": "TinyT2VPipeline", "config": "wan2.1", "reusing_steps": list(range(4, 19)),
                "num_inference_steps": 20, "prompts": ["p"] * 8, "seeds": [0, 1], "runs": 16, "guidance_scale": 5.0,
                "batch_size": 16, "tol": 0.005, "levels": levels, "captured_calls": [{}] * 15, "capture_steps": [4, 11, 18],
                "captured_layers": ["blocks.0.attn1"], "skipped": skipped or {}, "not_run": not_run or {}}
    env = {"device": "cuda", "device_name": "NVIDIA H200", "torch": "2.11", "diffusers": "0.42.1",
           "timeripple": "0.1.0", "date_utc": "2026-12-02 01:40"}
    dense = {"seconds_per_video": 0.06, "adherence": {"colour": 1.0, "shape": 1.0, "direction": 1.0}}
    return {"settings": settings, "methods": methods, "dense": dense, "rows": rows, "tensor": tensor, "environment": env}


def _write(folder, part, res):
    (folder / part).mkdir(parents=True, exist_ok=True)
    (folder / part / "results.json").write_text(json.dumps(res))


def _e2e():
    rows = [dict(label="stock", ms=1000.0, savings=0.0, peak_gib=20.0), dict(label="attention free", ms=300.0, savings=1.0,
                                                                           peak_gib=20.0),
            dict(label="token 75% pairs", ms=600.0, savings=0.75, peak_gib=20.5),
            dict(label="svg 70% flex", ms=700.0, savings=0.7, peak_gib=21.0),
            dict(label="pab skip", ms=500.0, savings=1.0, peak_gib=26.0),
            dict(label="channel (bundled θ)", ms=1010.0, savings=0.6, peak_gib=20.0)]
    return [dict(model="hunyuan", label="HunyuanVideo", dense_steps=11, rows=rows, card="NVIDIA H200", torch="2.11",
                 date="2026-12-02", not_timed={})]


def test_render_verdicts_follow_the_figures(tools, tmp_path):
    md, _ = tools
    levels = [0.5, 0.75]
    rows = [_row("channel", 0.5, 45.0), _row("channel", 0.75, 36.0), _row("svg", 0.5, 20.0), _row("svg", 0.75, 38.0),
            _row("pab", 0.5, 25.0, matched="savings_total"), _row("pab", 0.75, 22.0, matched="savings_total",
                                                                      converged=False, total=0.40),
            _row("magnitude", 0.5, 30.0), _row("skip", 0.5, 15.0)]
    tensor = [_tensor("channel", 0.5, 1e-5), _tensor("magnitude", 0.5, 3e-4), _tensor("skip", 0.5, 5e-5)]
    run = tmp_path / "run"
    _write(run, "main", _result(rows, tensor, levels, skipped={"minference": "MethodUnavailable: no kernel"},
                                not_run={"delta-dit": "not started before the call's time limit"}))
    (tmp_path / "e2e.json").write_text(json.dumps(_e2e()))
    out = md.render(run, tmp_path / "docs" / "results.md", tmp_path / "docs" / "eval_results.md", [tmp_path / "e2e.json"])
    text = out.read_text()
    verdicts = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1] for line in text.splitlines()
                if line.startswith("| ") and " | **" in line}
    assert verdicts["Tbl. 2: TimeRipple (channel mode) has the best PSNR at matched savings (50.0%)"] == "**supported**"
    # at 75% svg is better; pab did not reach its target (saved less) and is left out, not counted for channel
    assert verdicts["Tbl. 2: TimeRipple (channel mode) has the best PSNR at matched savings (75.0%)"] == "**not supported**"
    assert "left out (target not reached, saved less): pab" in text
    # Fig. 7: magnitude 30x (an order of magnitude), skip only 5x (not)
    fig7 = {c: v for c, v in verdicts.items() if c.startswith("Fig. 7")}
    assert next(v for c, v in fig7.items() if "`magnitude`, 50.0%" in c) == "**supported**"
    assert next(v for c, v in fig7.items() if "`skip`, 50.0%" in c) == "**not supported**"
    assert next(v for c, v in fig7.items() if "`magnitude`, 75.0%" in c) == "**not measurable here**"
    # the paper's estimate from counted savings: 50 / (11 + 39 * (1 - 0.75 * 0.7)) = 1.69x, not 2.10x
    th = next(c for c in verdicts if "75% has a theoretical speedup" in c)
    assert verdicts[th] == "**not supported**" and "1.69x" in text
    assert verdicts[next(c for c in verdicts if "adds little runtime memory" in c)] == "**supported**"
    assert verdicts[next(c for c in verdicts if "highest speedup among the attention methods" in c)] == "**supported**"
    # what each row matched, and nothing dropped
    assert "| pab | 50.0% | 37.5% whole run |" in text and "| channel | 50.0% | 50.0% reusing steps |" in text
    assert "`minference`: could not run: MethodUnavailable: no kernel" in text
    assert "`delta-dit`: not measured: not started before the call's time limit" in text
    assert (tmp_path / "docs" / "results" / "runs" / "run" / "main" / "results.json").is_file()  # runs/<folder>
    issue9 = (tmp_path / "docs" / "eval_results.md").read_text()
    assert "| channel (units) | 45.0 dB / 0.900 (50.0%) | 36.0 dB / 0.900 (75.0%) |" in issue9


def test_ablation_verdicts(tools, tmp_path):
    md, _ = tools
    rows = [_row("channel", 0.75, 35.0), _row("channel-fixed", 0.75, 36.0), _row("channel-alpha", 0.75, 31.0),
            _row("channel-temporal", 0.75, 25.0, converged=False)]
    rows[-1]["savings_reusing"] = 0.69
    for w, (sav, psnr) in zip((3, 4, 8), ((0.6, 35.5), (0.5, 36.0), (0.3, 43.0))):
        rows.append(dict(_row(f"channel-w{w}-same", 0.75, psnr), target=None, level=None, savings_reusing=sav))
    run = tmp_path / "run"
    _write(run, "ablation", _result(rows, [], [0.75]))
    text = md.render(run, tmp_path / "results.md", "", []).read_text()
    lines = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1] for line in text.splitlines() if " | **" in line}
    assert lines["Tbl. 3: the adaptive (ramped) threshold beats one fixed threshold at the same savings"] == "**not supported**"
    assert lines["Tbl. 3: spatial + temporal reuse beats temporal only at the same savings"] == "**supported**"
    assert lines["Tbl. 4: a per-channel τ = α·mean|Δ| lowers quality slightly against one shared θ"] == "**supported**"
    assert lines["Fig. 11: at one threshold, larger windows reuse less"] == "**supported**"
    assert lines["Fig. 11: at one threshold, window 4 already degrades quality against window 2"] == "**not supported**"


def test_merge_lists_jobs_that_never_finished(tools, tmp_path):
    _, pt = tools
    out = tmp_path / "run"
    (out / "w1" / "main").mkdir(parents=True)
    (out / "w1" / "main" / "results.json").write_text(json.dumps(_result([_row("channel", 0.5, 45.0)], [], [0.5])))
    (out / "jobs.json").write_text(json.dumps(["svg", "ablation", "channel", "fbc"]))
    assert pt._claim(out, "channel") and pt._claim(out, "svg") and not pt._claim(out, "svg")
    pt.merge(out)
    merged = json.loads((out / "main" / "results.json").read_text())
    assert merged["settings"]["not_run"] == {"svg": "started but not finished before the call's time limit",
                                             "fbc": "not started before the call's time limit"}
    assert [r["method"] for r in merged["rows"]] == ["channel"]


def test_speed_claim_compares_svg_and_timeripple_timed_in_different_calls(tools, tmp_path):
    """SVG timed in a later call than TimeRipple (no block holds both): the verdict compares the two, each
    against the stock step of its own block, and says so; without any SVG timing it stays not measurable."""
    md, _ = tools
    run = tmp_path / "run"
    _write(run, "main", _result([_row("channel", 0.5, 45.0)], [], [0.5]))
    first, later = _e2e(), _e2e()
    first[0]["rows"] = [r for r in first[0]["rows"] if r["label"] != "svg 70% flex"]
    first[0]["call"] = "call 1"
    later[0]["rows"] = [r for r in later[0]["rows"] if r["label"] in ("stock", "attention free", "svg 70% flex")]
    later[0]["rows"][2]["ms"] = 450.0  # faster than token 75% pairs (600 ms) in the other call
    later[0]["call"] = "call 2"
    (tmp_path / "e2e.json").write_text(json.dumps(first + later))

    def verdict():
        out = md.render(run, tmp_path / "docs" / "results.md", tmp_path / "docs" / "eval_results.md",
                        [tmp_path / "e2e.json"])
        line = next(x for x in out.read_text().splitlines() if "highest speedup among the attention methods" in x)
        return line.split(" | ")[1], line

    got, line = verdict()
    assert got == "**not supported**" and "each against the stock step timed in its own block" in line
    (tmp_path / "e2e.json").write_text(json.dumps(first))
    assert verdict()[0] == "**not measurable here**"
