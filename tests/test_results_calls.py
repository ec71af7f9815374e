"""tools/peers_tables.py across device calls: a job stopped at its own time limit is listed as not run, a later
call's rows join the first call's (never replacing them), and the verdicts use only figures that are theirs."""

import json
import time

import pytest

from test_results_tools import _e2e, _result, _row, _tensor, _write, tools  # noqa: F401 (fixture)


def _verdicts(text):
    return {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1] for line in text.splitlines()
            if line.startswith("| ") and " | **" in line}


def test_time_limit_stops_a_job_and_merge_lists_it(tools, tmp_path):  # noqa: F811
    _, pt = tools
    with pytest.raises(pt.JobTimeout, match="own time limit of 0 s"):
        with pt.time_limit(0.05):
            while True:  # a job that would never end
                time.sleep(0.01)
    with pt.time_limit(float("inf")):  # no limit: nothing fires
        time.sleep(0.02)
    assert not issubclass(pt.JobTimeout, Exception)  # `except Exception` in the harness cannot swallow it
    out = tmp_path / "run"
    (out / "w1" / "main").mkdir(parents=True)
    res = _result([_row("pab", 0.5, 20.0, matched="savings_total")], [], [0.375],
                  skipped={"tr-svg": "JobTimeout: stopped at its own time limit of 30 s (one process on cuda)",
                           "minference": "MethodUnavailable: no kernel"})
    (out / "w1" / "main" / "results.json").write_text(json.dumps(res))
    (out / "w1" / "ablation").mkdir()
    (out / "w1" / "ablation" / "results.json").write_text(json.dumps(_result([_row("channel-alpha", 0.75, 30.0)], [],
                                                                              [0.75])))
    (out / "jobs.json").write_text(json.dumps(["pab", "ablation", "tr-svg", "minference", "skip"]))
    (out / "ablation_plan.json").write_text(json.dumps(["channel-alpha", "channel-w8-same"]))
    pt._claim(out, "ablation")
    pt.merge(out)
    main = json.loads((out / "main" / "results.json").read_text())
    assert main["settings"]["not_run"] == {"tr-svg": "stopped at its own time limit of 30 s (one process on cuda)",
                                           "skip": "not started before the call's time limit"}
    assert main["settings"]["skipped"] == {"minference": "MethodUnavailable: no kernel"}
    assert main["settings"]["levels"] == [0.5]  # the row's level, not the cache's whole-run target
    abl = json.loads((out / "ablation" / "results.json").read_text())
    # only what the ablation job was asked to run is "not run"
    assert abl["settings"]["not_run"] == {"channel-w8-same": "the ablation job was started but not finished "
                                                             "before the call's time limit"}


def test_join_adds_later_calls_and_keeps_the_first(tools):  # noqa: F811
    import _results_join as rj

    one = _result([_row("channel", 0.5, 45.0), _row("svg", 0.5, 20.0)], [_tensor("channel", 0.5, 1e-5)], [0.5],
                  not_run={"fbc": "not started before the call's time limit",
                           "skip": "not started before the call's time limit"})
    two = _result([_row("channel", 0.5, 99.0), _row("fbc", 0.5, 25.0, matched="savings_total")],
                  [_tensor("minference", 0.5, 4e-4)], [0.375],
                  not_run={"skip": "stopped at its own time limit of 40 s (one process on cuda)"})
    two["see_also"] = {"skip": "see docs/other.md"}
    joined = rj.join([one, two])
    by = {(r["method"], r["call"]): r["psnr_mean"] for r in joined["rows"]}
    assert by == {("channel", 1): 45.0, ("svg", 1): 20.0, ("fbc", 2): 25.0}  # the later duplicate is not kept
    assert joined["settings"]["not_run"] == {"skip": "call 1: not started before the call's time limit; call 2: "
                                                     "stopped at its own time limit of 40 s (one process on cuda); "
                                                     "see docs/other.md"}
    assert joined["settings"]["levels"] == [0.5]
    assert [c["methods"] for c in joined["settings"]["calls"]] == [["channel", "svg"], ["fbc"]]
    mi = next(e for e in joined["tensor"] if e["method"] == "minference")
    assert mi["mse_vs_channel"] == pytest.approx(40.0)  # against the first call's channel at the same level
    other = json.loads(json.dumps(two))
    other["settings"]["num_inference_steps"] = 10
    with pytest.raises(ValueError, match="num_inference_steps"):
        rj.join([one, other])
    assert rj.join([None, one])["rows"][0]["call"] == 2 and rj.join([None, None]) is None


def test_render_two_calls(tools, tmp_path):  # noqa: F811
    md, _ = tools
    levels = [0.5]
    gpu, gpu2 = tmp_path / "runs" / "gpu", tmp_path / "runs" / "gpu2"
    _write(gpu, "main", _result([_row("channel", 0.5, 45.0)], [_tensor("channel", 0.5, 1e-5)], levels,
                                not_run={"pab": "not started before the call's time limit"}))
    _write(gpu2, "main", _result([_row("pab", 0.5, 25.0, matched="savings_total")], [], levels))
    abl = [_row("channel", 0.75, 35.0), _row("channel-w3", 0.75, 33.0), _row("channel-w4", 0.75, 32.0)]
    _write(gpu, "ablation", _result(abl, [], [0.75]))
    same = [dict(_row("channel-w4-same", 0.75, 39.0), target=None, level=None, savings_reusing=0.5)]
    _write(gpu2, "ablation", _result(same, [], [0.75], not_run={"channel-w8-same": "stopped at its own time limit"}))
    first = _e2e()
    first[0]["rows"] = [r for r in first[0]["rows"] if r["label"] != "pab skip"]
    first[0]["rows"].append(dict(label="fbc skip", ms=float("nan"), savings=float("nan"), peak_gib=None,
                                 note="not timed: the call's time limit came first"))
    (gpu / "e2e.json").write_text(json.dumps(first))
    later = [dict(first[0], rows=[dict(label="stock", ms=990.0, savings=0.0, peak_gib=20.0),
                                  dict(label="fbc skip", ms=100.0, savings=1.0, peak_gib=22.0),
                                  dict(label="pab skip", ms=500.0, savings=1.0, peak_gib=26.0),
                                  dict(label="token 75% pairs", ms=600.0, savings=0.75, peak_gib=30.0)])]
    (gpu2 / "e2e.json").write_text(json.dumps(later))
    (gpu2 / "meta.json").write_text(json.dumps({"command": "WORKERS=1 bash tools/results_device_run.sh"}))
    out = md.render([gpu, gpu2], tmp_path / "docs" / "results.md", tmp_path / "docs" / "eval_results.md",
                    [gpu / "e2e.json", gpu2 / "e2e.json"])
    text = out.read_text()
    v = _verdicts(text)
    # memory: TimeRipple's rows timed after a cache (call 2's +10 GiB) are not used; call 1's +0.5 GiB is
    mem = next(c for c in v if "adds little runtime memory" in c)
    assert v[mem] == "**supported**" and "+0.50 GiB over stock" in text and "(after a cache row)" in text
    assert "| HunyuanVideo (call 1) | fbc skip |" in text and "timed in call 2's block" in text
    assert "| pab | 50.0% | 37.5% whole run |" in text and "`pab`: not measured" not in text
    assert v["Fig. 11: at one threshold, window 4 already degrades quality against window 2"] == "**not supported**"
    f11 = next(c for c in v if c.startswith("Fig. 11: at one threshold, larger windows reuse less"))
    assert "windows 2/4 measured" in f11 and "window 3/8 not measured" in text
    assert "WORKERS=1 bash tools/results_device_run.sh" in text and "render " + str(gpu) + " " + str(gpu2) in text
    for folder in ("gpu", "gpu2"):  # each call's figures are kept in its own folder beside the page
        assert (tmp_path / "docs" / "results" / "runs" / folder / "main" / "results.json").is_file()


def test_bench_peers_e2e_times_variants_in_the_order_given(monkeypatch):
    """``--variants`` is a priority list under a deadline: timed in its order; an unknown label is refused."""
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_e2e as e2e
    import bench_peers_e2e as peers

    monkeypatch.setattr(e2e, "SMOKE", True)
    res = peers.run_model(e2e, "wan1.3b", 1, variants=["attention free", "stock"])
    assert [r["label"] for r in res["rows"]] == ["attention free", "stock"]
    assert all(r["ms"] > 0 for r in res["rows"])
    with pytest.raises(ValueError, match="unknown row labels \\['stok'\\]"):
        peers.run_model(e2e, "wan1.3b", 1, variants=["stok"])


def test_split_level_jobs_and_merge(tools, tmp_path):  # noqa: F811
    _, pt = tools
    assert pt.jobs(["skip", "ablation", "tr+fbc"], [0.75, 0.5]) == ["skip@0.75", "skip@0.5", "ablation",
                                                                    "tr+fbc@0.75", "tr+fbc@0.5"]
    assert pt.jobs(["skip"]) == ["skip"]
    assert pt.split_job("tr+fbc@0.875", [0.5]) == ("tr+fbc", [0.875])
    assert pt.split_job("skip", [0.5, 0.75]) == ("skip", [0.5, 0.75])
    out = tmp_path / "run"
    (out / "w1" / "main").mkdir(parents=True)
    res = _result([_row("skip", 0.75, 16.0)], [], [0.75],
                  skipped={"skip@0.875": "JobTimeout: stopped at its own time limit of 9 s (one process on cpu)"})
    (out / "w1" / "main" / "results.json").write_text(json.dumps(res))
    (out / "jobs.json").write_text(json.dumps(["skip@0.75", "skip@0.5", "skip@0.875", "tr+fbc@0.75"]))
    pt._claim(out, "skip@0.5")
    pt._claim(out, "tr+fbc@0.75")  # claimed, never saved
    pt.merge(out)
    main = json.loads((out / "main" / "results.json").read_text())
    assert main["settings"]["not_run"] == {"skip@0.5": "started but not finished before the call's time limit",
                                           "tr+fbc@0.75": "started but not finished before the call's time limit",
                                           "skip@0.875": "stopped at its own time limit of 9 s (one process on cpu)"}


def test_cpu_call_joins_with_its_device_and_no_timed_figures(tools, tmp_path):  # noqa: F811
    md, _ = tools
    import _results_join as rj

    gpu, cpu = tmp_path / "runs" / "gpu", tmp_path / "runs" / "cpu"
    _write(gpu, "main", _result([_row("channel", 0.5, 45.0)], [_tensor("channel", 0.5, 1e-5)], [0.5]))
    slow = _result([_row("skip", 0.5, 16.0)], [_tensor("skip", 0.5, 2e-3)], [0.5])
    slow["environment"] = dict(slow["environment"], device="cpu", threads=1)
    slow["environment"].pop("device_name")
    slow["settings"].update(batch_size=1, workers=1)  # the batch size does not change the videos
    _write(cpu, "main", slow)
    (cpu / "meta.json").write_text(json.dumps({"call": "call 3 (CPU)", "device": "cpu",
                                                 "command": "python tools/peers_tables.py run --device cpu"}))
    joined = rj.join([json.loads((gpu / "main" / "results.json").read_text()), slow])
    by = {r["method"]: (r["device"], rj.timed_comparable(r)) for r in joined["rows"]}
    assert by == {"channel": ("cuda", True), "skip": ("cpu", False)}
    assert [c["device_type"] for c in joined["settings"]["calls"]] == ["cuda", "cpu"]
    assert next(e for e in joined["tensor"] if e["method"] == "skip")["mse_vs_channel"] == pytest.approx(200.0)
    text = md.render([gpu, cpu], tmp_path / "docs" / "results.md", tmp_path / "docs" / "eval_results.md").read_text()
    skip_row = next(line for line in text.splitlines() if line.startswith("| skip | 50.0% |"))
    channel_row = next(line for line in text.splitlines() if line.startswith("| channel | 50.0% |"))
    assert "not shown (CPU)" in skip_row and "0.90x" not in skip_row
    assert "0.90x" in channel_row and "not shown" not in channel_row
    assert "call 3 (CPU): " in text and "**the CPU** (1 evaluation process, 1 thread each" in text
    assert "The command of call 3 (CPU) (on a CPU" in text and "run --device cpu" in text
    assert "on NVIDIA H200 and the CPU" in text and "Fig. 7: reuse has an order of magnitude" in text
    late = json.loads(json.dumps(slow))
    late["settings"]["not_run"] = {"skip@0.75": "started", "tr+fbc@0.5": "not started", "tr+fbc@0.75": "stopped"}
    nr = rj.join([json.loads((gpu / "main" / "results.json").read_text()), late], ["call 1", "call 3"])
    assert nr["settings"]["not_run"] == {"skip@0.75": "call 3: started",  # skip has a row: the level is named
                                         "tr+fbc": "call 3: not started (at 50.0%); call 3: stopped (at 75.0%)"}
    redo = json.loads(json.dumps(slow))  # a later call measures a level an earlier one did not finish
    redo["rows"], redo["tensor"] = [_row("skip", 0.75, 15.0)], []
    redone = rj.join([json.loads((gpu / "main" / "results.json").read_text()), late, redo],
                     ["call 1", "call 3", "call 4"])
    assert "skip@0.75" not in redone["settings"]["not_run"]
    assert redone["settings"]["not_run"]["tr+fbc"].startswith("call 3: not started (at 50.0%)")
    other = json.loads(json.dumps(slow))
    other["settings"]["seeds"] = [0]
    with pytest.raises(ValueError, match="seeds"):  # another device is fine, other runs are not
        rj.join([joined, other])


def test_render_tr_svg_above_its_target_and_a_failed_speed_row(tools, tmp_path):  # noqa: F811
    """tr-svg cannot save as little as 50% (SVG's masks alone save more): no same-savings verdict there; at 75%
    it is compared. A speed row that failed in one call and hit the time limit in another is listed with both
    reasons, and rows without a speedup show ``-`` (not ``-x``)."""
    md, _ = tools
    levels = [0.5, 0.75]
    rows = [_row("channel", 0.5, 45.0), _row("channel", 0.75, 36.0), _row("svg", 0.75, 17.0),
            dict(_row("tr-svg", 0.5, 19.4), savings_reusing=0.67, converged=False),  # saved more than asked
            _row("tr-svg", 0.75, 19.4)]
    run, run2 = tmp_path / "runs" / "gpu", tmp_path / "runs" / "gpu3"
    _write(run, "main", _result(rows[:3], [], levels))
    _write(run2, "main", _result(rows[3:], [], levels))
    first = _e2e()
    first[0]["rows"] = [r for r in first[0]["rows"] if r["label"] != "svg 70% flex"] + [
        dict(label="svg 70% flex", ms=float("nan"), savings=float("nan"), peak_gib=None,
             note="not timed: the call's time limit came first")]
    later = [dict(first[0], rows=[dict(label="stock", ms=990.0, savings=0.0, peak_gib=20.0),
                                  dict(label="channel (bundled θ)", ms=800.0, savings=0.8, peak_gib=20.0),
                                  dict(label="fbc skip", ms=50.0, savings=1.0, peak_gib=22.0),
                                  dict(label="pab skip", ms=300.0, savings=1.0, peak_gib=40.0),
                                  dict(label="svg 70% flex", ms=float("nan"), savings=float("nan"), peak_gib=None,
                                       note="FAILED OutOfMemoryError('CUDA out of memory. Tried to allocate 33.77 "
                                            "GiB. GPU 0 has a total capacity of 139.80 GiB')")])]
    (run / "e2e.json").write_text(json.dumps(first))
    (run2 / "e2e.json").write_text(json.dumps(later))
    out = md.render([run, run2], tmp_path / "docs" / "results.md", tmp_path / "docs" / "eval_results.md",
                    [run / "e2e.json", run2 / "e2e.json"])
    text = out.read_text()
    v = _verdicts(text)
    at50 = [c for c in v if c.startswith("TR + SVG (50.0%)")]
    assert len(at50) == 1 and v[at50[0]] == "**not measurable here**"
    assert "tr-svg cannot save as little as 50.0% (SVG's 70% masks alone save more: it reached 67.0%)" in text
    assert v[next(c for c in v if c.startswith("TR + SVG (75.0%): adding"))] == "**not supported**"
    assert v[next(c for c in v if c.startswith("TR + SVG (75.0%): the combination"))] == "**supported**"
    line = next(x for x in text.splitlines() if x.startswith("- Speed rows not timed in any call"))
    assert "(1; why, per call)" in line and "HunyuanVideo: svg 70% flex (call 1: not timed: the call's time limit " \
        "came first; call 2: FAILED OutOfMemoryError('CUDA out of memory. Tried to allocate 33.77 GiB)" in line
    assert "-x" not in text
    # PAB timed after FBC: FBC left at most its own peak (+2 GiB), so PAB's own is at least +18 GiB
    mem = next(c for c in v if "adds little runtime memory" in c)
    assert v[mem] == "**supported**"
    assert ("PAB's reusing step +20.00 GiB (NVIDIA H200, call 2, timed after fbc skip (at most +2.00 GiB of it left "
            "by that row: PAB's own at least +18.00 GiB))") in text
    # HunyuanVideo's channel row is faster than stock: the evidence says it is the padded text keys, not reuse
    ch = next(c for c in v if "faster than stock" in c)
    assert v[ch] == "**supported**" and "`drop_padded_text`" in text and "1.18x" in text
    assert "| HunyuanVideo (call 2) | svg 70% flex | - | - | - | - | - |" in text


def test_meta_marks_suspect_rows(tools, tmp_path):  # noqa: F811
    """A call's meta.json ``suspect`` ({"method@level": why}) marks those rows and tensor entries with ‡ in every
    table, and the limits list them with the reason and the call; other levels of the method stay unmarked."""
    md, _ = tools
    levels = [0.5, 0.875]
    gpu, gpu3 = tmp_path / "runs" / "gpu", tmp_path / "runs" / "gpu3"
    _write(gpu, "main", _result([_row("channel", 0.5, 45.0), _row("channel", 0.875, 30.0)],
                                [_tensor("channel", 0.875, 1e-4)], levels))
    _write(gpu3, "main", _result([_row("token-fidelity-pairs", 0.5, 31.0), _row("token-fidelity-pairs", 0.875, 11.9)],
                                 [_tensor("token-fidelity-pairs", 0.875, 0.3)], levels))
    (gpu3 / "meta.json").write_text(json.dumps({"call": "call 5", "suspect": {
        "token-fidelity-pairs@0.875": "broken on the GPU at this level"}}))
    out = md.render([gpu, gpu3], tmp_path / "docs" / "results.md", tmp_path / "docs" / "eval_results.md")
    text = out.read_text()
    assert "| token-fidelity-pairs (units) | 31.0 dB / 0.900 (50.0%) | 11.9 dB / 0.900 (87.5%) ‡ |" in text
    assert "| token-fidelity-pairs | 87.5% | 87.5% reusing steps | k 1 | 87.5% | 65.6% | 11.9 (8.9) ‡ |" in text
    assert "| token-fidelity-pairs | - | 3.00e-01 (3e+03x, 87.5%) ‡ |" in text
    assert ("**‡ Suspect rows** (1; figures of a known defect, not of the method's quality; their tensor-level "
            "entries too): `token-fidelity-pairs` at 87.5% (call 5): broken on the GPU at this level.") in text
    assert "87.5%) ‡ |" in (tmp_path / "docs" / "eval_results.md").read_text()
    assert "`token-fidelity-pairs` ‡ 0 |" in (tmp_path / "docs" / "eval_results.md").read_text()  # adherence line
    raw = (tmp_path / "docs" / "results" / "runs" / "gpu3" / "main" / "results.json").read_text()
    assert "suspect" not in raw  # the raw figures stay as the run wrote them; the mark lives in meta.json


def test_meta_superseded_rows_give_way_to_a_later_call(tools, tmp_path):  # noqa: F811
    """A call's meta.json ``superseded`` ({"method@level": why}) leaves those rows to a later call that re-measured
    them (the join otherwise keeps the first call's); the limits name the old figure, why, and the call shown.
    A superseded row that no later call measured stays, and the raw JSON of the call keeps every row."""
    md, _ = tools
    levels = [0.5, 0.875]
    gpu3, gpu4 = tmp_path / "runs" / "gpu3", tmp_path / "runs" / "gpu4"
    _write(gpu3, "main", _result([_row("token-fidelity-pairs", 0.5, 31.0), _row("token-fidelity-pairs", 0.875, 11.9),
                                  _row("token-fidelity-auto-head", 0.875, 11.7)],
                                 [_tensor("token-fidelity-pairs", 0.875, 0.3)], levels))
    (gpu3 / "meta.json").write_text(json.dumps({"call": "call 5", "superseded": {
        "token-fidelity-pairs@0.875": "a compaction defect", "token-fidelity-auto-head@0.875": "the same defect"}}))
    _write(gpu4, "main", _result([_row("token-fidelity-pairs", 0.875, 27.4)],
                                 [_tensor("token-fidelity-pairs", 0.875, 5e-3)], levels))
    (gpu4 / "meta.json").write_text(json.dumps({"call": "call 6"}))
    out = md.render([gpu3, gpu4], tmp_path / "docs" / "results.md", tmp_path / "docs" / "eval_results.md")
    text = out.read_text()
    assert "| token-fidelity-pairs (units) | 31.0 dB / 0.900 (50.0%) | 27.4 dB / 0.900 (87.5%) |" in text
    assert "| token-fidelity-pairs | 87.5% | 87.5% reusing steps | k 1 | 87.5% | 65.6% | 27.4 (24.4) |" in text
    assert "11.9" not in text.split("## What these runs do not show")[0]
    assert "| token-fidelity-pairs | - | 5.00e-03 (-x, 87.5%) |" in text and "3.00e-01" not in text
    assert ("**Re-measured rows** (1; an earlier call's figures of a defect since fixed, kept in its stored JSON): "
            "`token-fidelity-pairs` at 87.5%: call 5's 11.9 dB was a compaction defect; the row shown is call 6's.") in text
    assert "| token-fidelity-auto-head (units) | - | 11.7 dB / 0.900 (87.5%) |" in text  # not re-measured: it stays
    raw = json.loads((tmp_path / "docs" / "results" / "runs" / "gpu3" / "main" / "results.json").read_text())
    assert len(raw["rows"]) == 3


def test_meta_withdraws_a_speed_row_that_timed_our_defect(tools, tmp_path):  # noqa: F811
    """A call's meta.json ``e2e_withdrawn`` ({"<model label>|<row>": why}) takes a timed row out of the tables,
    plots and verdicts (listed as not timed, with its old figure and why); the stored raw JSON keeps it."""
    md, _ = tools
    run = tmp_path / "runs" / "gpu"
    _write(run, "main", _result([_row("channel", 0.5, 45.0)], [], [0.5]))
    (run / "e2e.json").write_text(json.dumps(_e2e()))
    text = md.render([run], tmp_path / "docs" / "results.md", tmp_path / "docs" / "eval_results.md",
                     [run / "e2e.json"]).read_text()
    verdict = lambda t: t.split("highest speedup")[1].splitlines()[0]  # noqa: E731
    assert "| HunyuanVideo | svg 70% flex | 700 |" in text and "**supported**" in verdict(text)
    (run / "meta.json").write_text(json.dumps({"call": "call 1", "e2e_withdrawn": {
        "HunyuanVideo|svg 70% flex": "the plan rebuilt two (N, N) masks every call"}}))
    text = md.render([run], tmp_path / "docs" / "results.md", tmp_path / "docs" / "eval_results.md",
                     [run / "e2e.json"]).read_text()
    assert "| HunyuanVideo | svg 70% flex | 700 |" not in text
    assert ("not timed: withdrawn (700 ms a step in call 1): the plan rebuilt two (N, N) masks every call |"
            in text)
    assert "**not measurable here**" in verdict(text) and "withdrawn" in verdict(text)
    stored = json.loads((tmp_path / "docs" / "results" / "runs" / "gpu" / "e2e.json").read_text())
    assert any(r["label"] == "svg 70% flex" and r["ms"] == 700.0 for b in stored for r in b["rows"])
