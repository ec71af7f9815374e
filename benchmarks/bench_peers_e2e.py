"""Step times of the peers on full-size random-weight transformers, beside TimeRipple and the ceiling.

Uses ``benchmarks/bench_e2e.py`` (the speed issue's script) for the models (real configs, bf16, random
weights), the forward call and the timer. Per model, one transformer forward is timed per variant:

* ``stock``; ``attention free`` (every self-attention core returns ``v``: the ceiling of any attention
  method); TimeRipple: ``channel (bundled θ)``, token mode at 75% pair savings with the ``budget (chain)``
  plan, the bias-free ``pairs`` plan, the README's ``fidelity`` setting, and the same pooled over the heads of
  each call (``budget_scope="call"``, the bundled default's plan) at 50% (keys only) and 75%;
* ``svg 70% flex``: the SVG-style attention of ``timeripple.peers`` with FlexAttention block masks
  (compiled; the first, untimed forward compiles);
* ``pab skip`` / ``fbc skip`` / ``taylorseer skip``: a forward in which diffusers' cache reuses (the second
  of two forwards at neighbouring steps inside one ``cache_context``, with the cache's knob set so that it
  reuses): the time of a reusing step of that cache.

The 50-step figures are composed from the bundled config's schedule (its dense steps at stock time, the
others at the row's time); the ceiling composes stock dense steps with attention-free steps. MInference-
and TimeRipple+SVG-style attention run as masked SDPA over the full ``N x N`` mask here (no sparse kernel),
so they are not timed (counted only; the table says so).

Peak memory: ``torch.cuda.max_memory_allocated`` during the timed forwards (weights included). ``--deadline``
(unix time) skips the variants not started by then (rows say so), for runs under a time limit.

    python benchmarks/bench_peers_e2e.py --models wan1.3b hunyuan --json peers_e2e.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

NOT_TIMED = {
    "minference": "masked SDPA over the full N x N mask (no sparse kernel here): counted only",
    "tr-svg": "channel reuse + masked SDPA over the full N x N mask: counted only",
    "magcache / delta-dit": "a reusing step skips blocks like fbc's; see the fbc row",
}


def _free(q, k, v, *, grid, text_len, text_position, attn_mask, return_stats, **_):
    from timeripple.peers import PeerCallStats

    B, H, N, D = q.shape
    return v, PeerCallStats(qk_savings=torch.ones(H, dtype=torch.float64), qk_products=B * H * N * N * D, mode="free")


def _timed_cache(e2e, model, fw, sched, kind, step, repeats, gib=lambda peak: None):
    """``(median ms, counted self-attention savings, peak GiB, note)`` of a reusing forward of diffusers' cache
    ``kind``: the second of two forwards at neighbouring steps in one ``cache_context``, with the cache set
    to reuse there."""
    from diffusers.hooks import FirstBlockCacheConfig, PyramidAttentionBroadcastConfig, TaylorSeerCacheConfig

    from timeripple.diffusers.registry import get_family
    from timeripple.peers import ComputeCounter
    from timeripple.peers.caches import TAYLORSEER_IDENTIFIERS

    now = {"t": None}
    config = {
        "pab": lambda: PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(-1.0, 2000.0),
            current_timestep_callback=lambda: now["t"]),
        "fbc": lambda: FirstBlockCacheConfig(threshold=1e9),
        "taylorseer": lambda: TaylorSeerCacheConfig(
            cache_interval=4, disable_cache_before_step=1, taylor_factors_dtype=torch.bfloat16,
            cache_identifiers=TAYLORSEER_IDENTIFIERS[get_family(model).name]),
    }[kind]()
    model.enable_cache(config)
    counter = ComputeCounter(model)
    times, savings = [], []
    cuda = torch.cuda.is_available() and not e2e.SMOKE
    peak = 0
    try:
        for _ in range(repeats + 1 if repeats > 1 else 1):  # repeats 1: the reusing step timed once, no warm-up
            model._reset_stateful_cache()
            counter.reset()
            if cuda:
                base = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
            with model.cache_context("cond"):
                for s in (step, step + 1):
                    now["t"] = sched.timesteps[s]
                    e2e._sync()
                    t0 = time.perf_counter()
                    e2e.forward(model, fw, sched, s)
                    e2e._sync()
                    last = time.perf_counter() - t0
            times.append(last)
            peak = max(peak, torch.cuda.max_memory_allocated() - base) if cuda else 0
            t = counter.totals
            savings.append(1.0 - t.per_forward_attn[-1] / t.first_attn if t.first_attn else 0.0)
    finally:
        counter.remove()
        model.disable_cache()
    return statistics.median(times[1:] or times) * 1e3, savings[-1], gib(peak), "" if len(times) > 1 else "timed once, no warm-up"


def run_model(e2e, name, repeats, deadline=0.0, variants=None, on_row=None):
    import timeripple
    from timeripple import detect, pairs
    from timeripple.peers import PeerSchedule, install_attention_peer, svg_attention

    label, cfg_name, _, _, _ = e2e.MODELS[name]
    t_build = time.perf_counter()
    model, fw, sched, grid = e2e.build(name)
    build_s = time.perf_counter() - t_build
    text_len = {"wan2.1": 0, "hunyuan_video": 40, "cogvideox": 226}[cfg_name]
    cfg = timeripple.load_config(cfg_name, mode="channel")  # the base: its schedule and θ; rows set their mode
    dense_steps = sum(cfg.attention_kwargs(i, 50) is None for i in range(50))
    step = next(i for i in range(50) if cfg.attention_kwargs(i, 50) is not None) + 15
    rows = []
    cuda = torch.cuda.is_available() and not e2e.SMOKE
    card = "CPU smoke run" if e2e.SMOKE else torch.cuda.get_device_name()

    def record(label_, fn):
        if variants and label_ not in variants:
            return
        if deadline and time.time() > deadline:
            rows.append(dict(label=label_, ms=float("nan"), savings=float("nan"), peak_gib=None,
                             note="not timed: the call's time limit came first"))
            print(f"  {label_}: not timed (deadline)", flush=True)
            return
        t0 = time.perf_counter()
        try:
            ms, savings, peak, note = fn()
        except Exception as exc:  # one failing variant must not lose the others
            ms, savings, peak, note = float("nan"), float("nan"), None, f"FAILED {exc!r:.200}"
        rows.append(dict(label=label_, ms=ms, savings=savings, peak_gib=peak, note=note,
                         wall_s=time.perf_counter() - t0))
        if on_row is not None:  # partial results survive a run killed mid-model
            on_row(dict(model=name, label=label, dense_steps=dense_steps, step=step, rows=rows, partial=True,
                        card=card, torch=torch.__version__, date=str(datetime.date.today()), repeats=repeats,
                        not_timed=NOT_TIMED))
        print(f"  {label_}: {ms:.0f} ms, savings {savings:.3f}, peak {peak} GiB {note} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)

    def gib(peak):
        return None if not cuda else (peak + torch.cuda.memory_allocated()) / 2**30

    def stock():
        sec, peak, _ = e2e.timed(model, fw, sched, step, repeats)
        return sec * 1e3, 0.0, gib(peak), ""

    def peer(fn, kwargs):
        def run():
            handle = install_attention_peer(model, fn, PeerSchedule(kwargs=kwargs), scheduler=sched)
            try:
                sec, peak, _ = e2e.timed(model, fw, sched, step, repeats)
                return sec * 1e3, handle.stats.total_savings, gib(peak), ""
            finally:
                handle.remove()
        return run

    def ripple(config):
        def run():
            timeripple.apply_timeripple(model, config, scheduler=sched)
            try:
                sec, peak, _ = e2e.timed(model, fw, sched, step, repeats)
                return sec * 1e3, timeripple.get_stats(model).total_savings, gib(peak), ""
            finally:
                timeripple.remove_timeripple(model)
        return run

    # today's plan, spelled out (so a change of the bundled defaults cannot change what these rows mean)
    plain = dict(key_repr="source", query_repr="copy", key_score="delta", budget_scope="head")
    budget = detect.budget_for_pair_savings(0.75, grid, text_len=text_len)
    bq, bk = pairs.pair_budgets_for_pair_savings(0.75, grid, text_len=text_len)
    fidelity = cfg.replace(mode="token", pair_savings=0.75, key_repr="mean", key_score="kv", query_repr="interp",
                           token_keys="chain", key_share=0.7, budget_scope="head")
    todo = [("stock", stock), ("attention free", peer(_free, {})),
            ("token 75% pairs", ripple(cfg.replace(mode="token", budget=max(bq, 1e-6), key_budget=bk,
                                                   token_keys="pairs", **plain))),
            ("token 75% fidelity (README)", ripple(fidelity))]
    for target, share in ((0.5, 1.0), (0.75, 0.7)):  # the bundled default's plan: pooled over the heads of a call
        todo.append((f"token {target:.0%} fidelity pooled (key share {share:g})",
                     ripple(fidelity.replace(pair_savings=target, key_share=share, budget_scope="call"))))
    todo.append(("svg 70% flex", peer(svg_attention, {"sparsity": 0.7, "backend": "flex"})))
    for kind in ("pab", "fbc", "taylorseer"):
        todo.append((f"{kind} skip", lambda kind=kind: _timed_cache(e2e, model, fw, sched, kind, step, repeats, gib)))
    todo += [("token 75% budget (chain)", ripple(cfg.replace(mode="token", budget=budget, token_keys="chain", **plain))),
             ("channel (bundled θ)", ripple(cfg.replace(mode="channel")))]
    if variants:  # in the order asked (what matters most first, under a deadline); unknown labels are refused
        known = dict(todo)
        unknown = [v for v in variants if v not in known]
        if unknown:
            raise ValueError(f"--variants: unknown row labels {unknown}; known: {list(known)}")
        todo = [(v, known[v]) for v in dict.fromkeys(variants)]
    for label_, fn in todo:
        record(label_, fn)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return dict(model=name, label=label, grid=list(grid), dense_steps=dense_steps, step=step, rows=rows,
                build_s=build_s, card=card,
                torch=torch.__version__, date=str(datetime.date.today()), command=" ".join(sys.argv),
                repeats=repeats, not_timed=NOT_TIMED)


def render(results) -> str:
    lines = ["| model | variant | ms per step | step speedup | 50 steps (composed) | ceiling | counted savings | note |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for res in results:
        rows = {r["label"]: r for r in res["rows"]}
        stock = rows["stock"]["ms"]
        free = rows.get("attention free", {"ms": float("nan")})["ms"]
        nd, nr = res["dense_steps"], 50 - res["dense_steps"]
        ceiling = 50 * stock / (nd * stock + nr * free)
        for r in res["rows"]:
            total = 50 * stock / (nd * stock + nr * r["ms"])
            lines.append(f"| {res['label']} | {r['label']} | {r['ms']:.0f} | {stock / r['ms']:.2f}x | {total:.2f}x | "
                         f"{ceiling:.2f}x | {r['savings']:.1%} | {r['note']} |")
        for k, why in res["not_timed"].items():
            lines.append(f"| {res['label']} | {k} | | | | {ceiling:.2f}x | | not timed: {why} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["wan1.3b", "hunyuan"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", default="")
    parser.add_argument("--render", nargs="*", default=None)
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run that checks the script only")
    parser.add_argument("--deadline", type=float, default=0.0, help="unix time after which no variant is started")
    parser.add_argument("--variants", nargs="*", default=None,
                        help="only these row labels, timed in this order (default: all, in the table's order)")
    args = parser.parse_args(argv)
    if args.render is not None:
        print(render([r for p in args.render for r in json.load(open(p))]))
        return
    try:
        import bench_e2e as e2e
    except ImportError:
        sys.exit("bench_peers_e2e.py needs benchmarks/bench_e2e.py (the speed issue's script) beside it")
    e2e.SMOKE = args.smoke
    if not (torch.cuda.is_available() or args.smoke):
        sys.exit("bench_peers_e2e.py needs a CUDA device (or --render, --smoke)")
    results = []
    for name in args.models:
        print(f"{name}:", flush=True)
        def dump(partial, done=list(results)):
            if args.json:
                with open(args.json + ".tmp", "w") as fh:
                    json.dump(done + [partial], fh, indent=1)
                os.replace(args.json + ".tmp", args.json)

        results.append(run_model(e2e, name, args.repeats, args.deadline, args.variants, on_row=dump))
        if args.json:
            json.dump(results, open(args.json, "w"), indent=1)
    print(render(results))


if __name__ == "__main__":
    main()
