"""Run every registered ``timeripple eval`` method on the tiny model, and render docs/results.md from the runs.

``run`` evaluates one method at a time with the harness's Python API (:func:`timeripple.eval.evaluate`; the
dense videos are generated once per process and cached), so a method that cannot run on the pipeline or
device is recorded with its reason instead of stopping the run. Several ``run`` processes with the same
``--out`` share the work: each claims the next job (a method, or the ablation group) by creating a file
(use one process per GPU: measured on an H200, five processes on one GPU added no throughput, as the GPU
time-slices between them). ``--deadline`` stops claiming new jobs at a given time and ``--job-timeout`` /
``--stop-at`` stop a running job (it is listed as not run), so a run under a time limit ends with what it
measured. ``render`` joins the runs of several calls of the same settings (a later call measures what an
earlier one did not reach).

Matching: methods that run inside attention (``build``) are matched on the savings of the base config's
reusing steps. Methods that install themselves (diffusers' caches, Δ-DiT, TimeRipple + a cache) have no
dense steps of their own, so they are matched on the whole run, at the whole-run savings that a method with
the config's schedule has at each level (``level x reusing steps / steps``: 75% on 15 of 20 steps = 56.25%).
Every row records what it matched (``matched_on``) and the level it stands beside (``level``).

    # the tables (tiny model, 16 runs per pipeline call), ONE process per GPU (several add no throughput)
    python tools/peers_tables.py run --out runs/gpu --device cuda --job-timeout 40
    python tools/peers_tables.py merge runs/gpu
    # the same settings on a CPU (2 cores: 2 processes, 1 thread each), one job per method and level, the knob
    # searched on 2 runs (every row still measured on all 16), stopped at a given time (docs/results.md, call 3)
    python tools/peers_tables.py run --out runs/cpu --device cpu --split-levels --search-runs 2 \
        --levels 0.75 0.5 0.875 --methods skip tr+fbc --stop-at "$(date -d 'now + 30 min' +%s)" &  # x2
    # a reduced CPU check of the whole chain
    python tools/peers_tables.py run --out runs/cpu --prompts 1 --seeds 0 --steps 6 --levels 0.75 --methods channel fbc
    python tools/peers_tables.py merge runs/cpu
    # docs/results.md and docs/eval_results.md from merged runs, one folder per device call (and bench_peers_e2e.py's JSON)
    python tools/peers_tables.py render docs/results/runs/gpu docs/results/runs/gpu2 \
        --e2e docs/results/runs/gpu/e2e.json docs/results/runs/gpu2/e2e.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import time
import traceback
from pathlib import Path

ABLATION_JOB = "ablation"
FIRST = ("svg", ABLATION_JOB, "channel", "token-budget")  # long or most cited jobs first, then the registry order
WINDOWS = (3, 4, 8)


class JobTimeout(BaseException):  # not an Exception: no `except Exception` on the way swallows it
    """A job ran past its own time limit (``--job-timeout``, or the call's ``--stop-at``)."""


TIMEOUT_NOTE = "stopped at its own time limit"


@contextlib.contextmanager
def time_limit(seconds):
    """Raise :class:`JobTimeout` in the main thread after ``seconds`` (no limit for `None` or inf)."""
    if seconds is None or math.isinf(seconds):
        yield
        return

    def fire(signum, frame):
        raise JobTimeout(f"{TIMEOUT_NOTE} of {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _claim(out: Path, job: str) -> bool:
    (out / "claims").mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(out / "claims" / job.replace("+", "_plus_"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def jobs(methods=None, levels=None):
    """The job list: every registered method (or ``methods``) and the ablation group, long ones first.

    With ``levels``, a method's job is split into one job per level (``name@level``, the levels in the order
    given), so a run stopped at its time limit keeps every level it finished (e.g. on a slow CPU)."""
    from timeripple.eval import list_methods
    from timeripple.eval.ablation_methods import ABLATION_METHODS

    if methods:  # as given (a job list of its own, e.g. what an earlier call did not reach)
        out = list(dict.fromkeys(methods))
    else:
        names = [m for m in list_methods() if m not in ABLATION_METHODS]
        out = [j for j in FIRST if j in names or j == ABLATION_JOB]
        out += [m for m in names if m not in out]
    if not levels:
        return out
    return [j if j == ABLATION_JOB else f"{j}@{lv:g}" for j in out for lv in ([None] if j == ABLATION_JOB else levels)]


def split_job(job, levels):
    """``(method, levels)`` of a job: ``name@level`` is one level of ``name``, a plain name all ``levels``."""
    name, _, level = job.rpartition("@")
    return (name, [float(level)]) if name else (job, list(levels))


def _evaluate(name, levels, common, config_fraction):
    """One method: attention methods on the reusing steps, self-installing ones on the whole run."""
    from timeripple.eval import evaluate, get_method

    method = get_method(name)
    if method.install is not None and method.knob is not None:
        res = evaluate(methods=[name], levels=[lv * config_fraction for lv in levels], match_on="total", **common)
        for row, lv in zip(res.rows, levels):
            row["level"] = lv
        for entry in res.tensor:
            entry["level"] = entry["target"] / config_fraction
    else:
        res = evaluate(methods=[name], levels=levels, **common)
        for row in res.rows:
            row["level"] = row["target"]
        for entry in res.tensor:
            entry["level"] = entry["target"]
    return res


def _merge(results, skipped):
    from timeripple.eval import EvalResult

    if not results:
        return None
    first = results[0]
    merged = EvalResult(settings=dict(first.settings), methods=[m for r in results for m in r.methods],
                        dense=first.dense, rows=[x for r in results for x in r.rows],
                        tensor=[x for r in results for x in r.tensor], environment=first.environment)
    merged.settings["skipped"] = dict(skipped)
    merged.settings.pop("match_on", None)  # per row (``matched_on``)
    return merged


class Worker:
    def __init__(self, args):
        import torch

        from timeripple.config import load_config
        from timeripple.demo import load_tiny_pipeline
        from timeripple.eval import EVAL_PROMPTS
        from timeripple.eval.capture import reusing_steps

        torch.set_num_threads(2 if args.device == "cuda" else 1)  # several workers share the CPU
        self.args, self.out = args, Path(args.out)
        self.me = self.out / f"w{int(time.time())}-{os.getpid()}"
        self.me.mkdir(parents=True, exist_ok=True)
        self.logfile = open(self.me / "log.txt", "a")
        self.pipe = load_tiny_pipeline(device=args.device)
        self.common = dict(pipe=self.pipe, prompts=list(EVAL_PROMPTS[: args.prompts]), seeds=list(args.seeds),
                           num_inference_steps=args.steps, capture_steps=args.capture_steps,
                           capture_layers=args.capture_layers, tensor_level=not args.no_tensor, progress=False,
                           tol=args.tol, search_runs=args.search_runs)
        self.fraction = len(reusing_steps(load_config("wan2.1", mode="channel"), args.steps)) / args.steps
        self.main, self.main_skipped, self.abl, self.abl_skipped = [], {}, [], {}

    def log(self, msg):
        line = f"[{time.strftime('%H:%M:%S')}] {self.me.name}: {msg}"
        print(line, flush=True)
        self.logfile.write(line + "\n")
        self.logfile.flush()

    def limit(self):
        """Seconds the next job may run: ``--job-timeout``, cut to what is left before ``--stop-at``."""
        limit = self.args.job_timeout or math.inf
        if self.args.stop_at:
            limit = min(limit, self.args.stop_at - time.time())
        return limit

    def reload(self):
        """A fresh pipeline after a job was stopped mid-call (a cache or processor may be left installed)."""
        from timeripple.demo import load_tiny_pipeline

        self.pipe = load_tiny_pipeline(device=self.args.device)
        self.common["pipe"] = self.pipe

    def one(self, name, levels, results, skipped, folder, common=None, key=None):
        """Evaluate ``name`` at ``levels``; ``key`` names the job in the skipped / not-run lists (default ``name``)."""
        key = key or name
        t0 = time.time()
        limit = self.limit()
        try:
            if limit <= 1:
                raise JobTimeout(f"{TIMEOUT_NOTE}: no time left before the call's end")
            with time_limit(limit):
                res = _evaluate(name, levels, dict(common or self.common, pipe=self.pipe), self.fraction)
            results.append(res)
            self.log(f"{key}: done in {time.time() - t0:.0f} s")
        except JobTimeout as exc:  # listed as not run (merge); the next job gets a clean pipeline
            skipped[key] = f"JobTimeout: {exc} (one process on {self.args.device})"
            self.log(f"{key}: STOPPED after {time.time() - t0:.0f} s ({exc})")
            if time.time() - t0 > 1:
                self.reload()
        except Exception as exc:  # the reason goes into the table; the other methods still run
            skipped[key] = f"{type(exc).__name__}: {exc}"
            self.log(f"{key}: SKIPPED after {time.time() - t0:.0f} s ({skipped[key][:300]})")
            traceback.print_exc()
        merged = _merge(results, skipped)  # after every method, so a run cut short keeps what it measured
        (self.me / folder).mkdir(exist_ok=True)
        name, text = ("results.json", json.dumps(merged.to_dict())) if merged is not None else \
            ("skipped.json", json.dumps(skipped, indent=1))
        (self.me / folder / "tmp.json").write_text(text)
        os.replace(self.me / folder / "tmp.json", self.me / folder / name)  # never half a file

    def ablation_plan(self):
        """The runs of the ablation job, as asked (merge lists those that did not finish)."""
        from timeripple.eval.ablation_methods import ABLATION_METHODS

        wanted = self.args.ablation_methods
        windows = WINDOWS if self.args.same_windows is None else self.args.same_windows
        return ([] if self.args.same_scale else ["channel"]) + [m for m in ABLATION_METHODS if wanted is None
                                                                or m in wanted] + [f"channel-w{w}-same" for w in windows]

    def ablation(self):
        from timeripple.eval import Method, MethodSetup, register_method
        from timeripple.eval.ablation_methods import ABLATION_METHODS
        from timeripple.eval.methods import scaled

        level = self.args.ablation_level
        common = dict(self.common, tensor_level=False)
        given = self.args.same_scale  # channel's knob at this level from an earlier call: channel is not re-run
        names = () if given else ("channel",)
        wanted = self.args.ablation_methods
        for name in names + tuple(m for m in ABLATION_METHODS if wanted is None or m in wanted):
            self.one(name, [level], self.abl, self.abl_skipped, "ablation", common)
        channel = next((r for r in self.abl if r.rows and r.rows[0]["method"] == "channel"), None)
        if channel is None and not given:
            return
        scale = given or channel.rows[0]["knob"]  # Fig. 11 as the paper runs it: every window at window 2's threshold
        for w in (WINDOWS if self.args.same_windows is None else self.args.same_windows):
            register_method(Method(
                f"channel-w{w}-same", f"channel mode, window {w}, at window 2's threshold (x{scale:.3g}) for "
                f"{level:.0%}", knob=None, savings="q·kᵀ partial products",
                build=lambda _k, cfg, w=w: MethodSetup(scaled(cfg.replace(mode="channel", window=w), scale))),
                replace=True)
            self.one(f"channel-w{w}-same", [level], self.abl, self.abl_skipped, "ablation", common)

    def run(self, job_list):
        self.log(f"settings: {json.dumps({k: v for k, v in self.common.items() if k != 'pipe'})}, levels "
                 f"{self.args.levels}, whole-run share of the reusing steps {self.fraction:.4g}")
        for job in job_list:
            if self.args.deadline and time.time() > self.args.deadline:
                self.log("deadline reached: no new jobs")
                break
            if not _claim(self.out, job):
                continue
            self.log(f"claimed {job}")
            if job == ABLATION_JOB:
                (self.out / "ablation_plan.json").write_text(json.dumps(self.ablation_plan()))
                self.ablation()
            else:
                name, levels = split_job(job, self.args.levels)
                self.one(name, levels, self.main, self.main_skipped, "main", key=job)
        self.logfile.close()


def _level_done(job, done):
    """Whether a one-level job (``name@level``) has its row."""
    name, _, level = job.rpartition("@")
    return bool(name) and (name, round(float(level), 9)) in done


def merge(folder) -> None:
    """Merge the workers' ``w*/main`` and ``w*/ablation`` into ``main/`` and ``ablation/``; jobs that were
    claimed but never saved (a run killed mid-method) or never claimed are listed as not run."""
    from timeripple.eval import EvalResult

    folder = Path(folder)
    claimed = {p.name.replace("_plus_", "+") for p in (folder / "claims").glob("*")}
    planned = json.loads((folder / "jobs.json").read_text()) if (folder / "jobs.json").is_file() else []
    for part in ("main", "ablation"):
        loaded = []
        skipped = {}
        for w in sorted(folder.glob("w*")):
            if (w / part / "results.json").is_file():
                loaded.append(json.loads((w / part / "results.json").read_text()))
            if (w / part / "skipped.json").is_file():
                skipped.update(json.loads((w / part / "skipped.json").read_text()))
        for d in loaded:
            skipped.update(d["settings"].get("skipped") or {})
        stopped = {m: why.split(": ", 1)[1] for m, why in skipped.items() if why.startswith("JobTimeout")}
        skipped = {m: why for m, why in skipped.items() if m not in stopped}
        if not loaded:
            print(f"{part}: nothing measured; stopped {list(stopped)}, skipped {list(skipped)}")
            continue
        first = loaded[0]
        seen = set()  # a (method, target) measured by two calls is kept once (the first worker's, by name)
        for d in loaded:
            d["rows"] = [r for r in d["rows"] if (r["method"], r["target"]) not in seen
                         and not seen.add((r["method"], r["target"]))]
        tseen = set()
        for d in loaded:
            d["tensor"] = [e for e in d["tensor"] if (e["method"], e["target"]) not in tseen
                           and not tseen.add((e["method"], e["target"]))]
        methods = {m["name"]: m for d in loaded for m in d["methods"] if any(r["method"] == m["name"] for r in d["rows"])}
        ran = {r["method"] for d in loaded for r in d["rows"]} | set(skipped) | set(stopped)
        settings = dict(first["settings"], skipped=skipped, workers=len([w for w in folder.glob("w*") if w.is_dir()]))
        levels = sorted({r["level"] for d in loaded for r in d["rows"] if r.get("level") is not None})
        settings["levels"] = levels or settings["levels"]  # the rows' levels (a cache's targets are whole-run savings)
        if part == "main":
            done = {(r["method"], round(r["level"], 9)) for d in loaded for r in d["rows"] if r.get("level") is not None}
            settings["not_run"] = {j: ("started but not finished before the call's time limit" if j in claimed
                                       else "not started before the call's time limit")
                                   for j in planned if j != ABLATION_JOB and j not in ran
                                   and not _level_done(j, done)}
        elif ABLATION_JOB in planned:
            from timeripple.eval.ablation_methods import ABLATION_METHODS

            why = ("the ablation job was started but not finished before the call's time limit" if ABLATION_JOB
                   in claimed else "not started before the call's time limit")
            plan = folder / "ablation_plan.json"
            asked = json.loads(plan.read_text()) if plan.is_file() else \
                ("channel",) + ABLATION_METHODS + tuple(f"channel-w{w}-same" for w in WINDOWS)
            settings["not_run"] = {m: why for m in asked if m not in ran}
        settings["not_run"] = dict(settings.get("not_run") or {}, **stopped)
        channel = {e["target"]: e["mse"] for d in loaded for e in d["tensor"] if e["method"] == "channel"}
        for d in loaded:  # x channel across workers (the harness computes it within one call only)
            for e in d["tensor"]:
                e["mse_vs_channel"] = e["mse"] / channel[e["target"]] if channel.get(e["target"]) else None
        res = EvalResult(settings=settings, methods=list(methods.values()), dense=first["dense"],
                         rows=[r for d in loaded for r in d["rows"]], tensor=[e for d in loaded for e in d["tensor"]],
                         environment=first["environment"])
        (folder / part).mkdir(exist_ok=True)  # JSON and the harness's plots (tables: `render`)
        (folder / part / "results.json").write_text(json.dumps(res.to_dict(), indent=1) + "\n")
        from timeripple.eval.plots import plot_all

        plot_all(res, folder / part)
        print(f"{part}: {len(res.rows)} rows, {len(res.tensor)} tensor entries, skipped {list(skipped)}, "
              f"not run {settings['not_run']}")
        nan = float("nan")
        for r in res.rows:  # the figures in the log, in case the archive does not come back
            print(f"  {r['method']} level {r.get('level')}: knob {r.get('knob')} savings reusing "
                  f"{r.get('savings_reusing', nan):.4f} total {r.get('savings_total', nan):.4f} PSNR "
                  f"{r.get('psnr_mean', nan):.2f} (min {r.get('psnr_min', nan):.2f}) SSIM {r.get('ssim_mean', nan):.3f} "
                  f"s/video {r.get('seconds_per_video', nan):.3f} converged {r.get('converged')}")
        for e in res.tensor:
            print(f"  tensor {e['method']} level {e.get('level')}: MSE {e.get('mse', nan):.3e} savings "
                  f"{e.get('savings', nan):.4f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--out", required=True)
    r.add_argument("--device", default="cpu")
    r.add_argument("--methods", nargs="*", default=None, help="methods (default: every registered one + ablations)")
    r.add_argument("--import", dest="imports", action="append", default=[], help="a module that registers methods")
    r.add_argument("--prompts", type=int, default=8, help="the first N of timeripple.eval.EVAL_PROMPTS")
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    r.add_argument("--steps", type=int, default=20)
    r.add_argument("--levels", type=float, nargs="+", default=[0.5, 0.75, 0.875])
    r.add_argument("--ablation-level", type=float, default=0.75)
    r.add_argument("--ablation-methods", nargs="*", default=None, help="ablations to run (default: all)")
    r.add_argument("--capture-steps", type=int, default=3)
    r.add_argument("--capture-layers", type=int, default=None)
    r.add_argument("--no-tensor", action="store_true")
    r.add_argument("--tol", type=float, default=0.005)
    r.add_argument("--search-runs", type=int, default=None,
                   help="runs used while searching a knob (the first ones; every row is then measured on all "
                        "runs); default all. Fewer is cheaper on a CPU")
    r.add_argument("--split-levels", action="store_true",
                   help="one job per method and level (`name@level`): a run cut short keeps the levels it finished")
    r.add_argument("--deadline", type=float, default=0.0, help="unix time after which no new job is started")
    r.add_argument("--job-timeout", type=float, default=0.0, help="seconds one job (method) may run (0: no limit)")
    r.add_argument("--stop-at", type=float, default=0.0, help="unix time at which a running job is stopped")
    r.add_argument("--same-scale", type=float, default=None,
                   help="channel's threshold scale at the ablation level from an earlier call: the ablation "
                        "group then does not re-run channel and runs channel-wK-same at this scale")
    r.add_argument("--same-windows", type=int, nargs="*", default=None,
                   help="windows of channel-wK-same (default 3 4 8; none: no such runs)")
    m = sub.add_parser("merge")
    m.add_argument("folder")
    d = sub.add_parser("render")
    d.add_argument("run", nargs="+", help="folders merged by `merge` (main/ and ablation/ inside), one per device "
                   "call of the same settings, oldest first: a later call adds what the earlier ones did not measure")
    d.add_argument("--out", default="docs/results.md")
    d.add_argument("--eval-out", default="docs/eval_results.md")
    d.add_argument("--e2e", nargs="*", default=[], help="JSON files of benchmarks/bench_peers_e2e.py")
    d.add_argument("--command", default="", help="the first call's device command (default: its meta.json)")
    d.add_argument("--note", default="", help="a paragraph on the code the first call used (default: its meta.json)")
    args = parser.parse_args(argv)
    if args.cmd == "run":
        import importlib

        for module in args.imports:
            importlib.import_module(module)
        job_list = jobs(args.methods, args.levels if args.split_levels else None)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        if not (out / "jobs.json").is_file():
            (out / "jobs.json").write_text(json.dumps(job_list))
        Worker(args).run(job_list)
    elif args.cmd == "merge":
        merge(args.folder)
    else:
        from _results_md import render

        render(args.run, args.out, args.eval_out, args.e2e, args.command, args.note)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
