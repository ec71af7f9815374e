"""End-to-end step times of full-size random-weight diffusers transformers with TimeRipple (issue 10).

Builds each transformer at its real config (bf16, on the GPU, random weights), drives it through the
public API ``apply_timeripple(transformer, cfg, scheduler=...)`` and times one forward per variant:

* ``stock``: diffusers as installed (the baseline of every speedup);
* ``dense (processors)``: a dense step through the TimeRipple processors (HunyuanVideo drops its padded
  text keys there; ``drop_padded_text=False`` is the stock masked call);
* ``token <p>% <plan>``: a reuse step in token mode at ``p`` pair savings (budget), for the plans
  ``chain`` (keys merge like queries, the per-key bias path) and ``pairs`` (keys merged in disjoint
  pairs, bias-free count classes), key-heavy split (every pair merged, queries take the rest);
* ``fidelity <p>%`` (``--setting fidelity``): the README's quality setting
  ``replace(mode="token", pair_savings=p, key_repr="mean", key_score="kv", query_repr="interp")``
  (fused score and epilogue kernels; ``, torch scores``: the same in plain torch; ``, cuda_graph``
  with ``--graphs``: the same with ``cuda_graph=True``, the token path replayed as a CUDA graph);
* ``channel``: a reuse step in channel mode at the bundled threshold;
* ``attention free``: every self-attention core replaced by a free stand-in (returns ``v``): the
  ceiling of any attention speedup.

The 50-step figure is composed from the config's schedule (its dense steps at the processors' dense
time, the others at the variant's time) against 50 stock steps; the ceiling composes the stock dense
steps with free reuse steps. ``--loop`` also runs a real 50-step denoising loop (one transformer call
per step, FlowMatch Euler) stock and with TimeRipple. Timed: wall clock of one forward between CUDA
syncs, median of ``--repeats`` after one warm-up. Peak memory: ``torch.cuda.max_memory_allocated`` in
one forward, relative to stock. Counted: the pair savings that TimeRipple recorded in the timed steps.

    python benchmarks/bench_e2e.py --models wan1.3b --loop --json e2e_wan1.3b.json
    python benchmarks/bench_e2e.py --render e2e_*.json --out BENCHMARKS.md   # the markdown section
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import statistics
import sys
import time

import torch

from bench_attention import FIDELITY, torch_fidelity  # the fidelity options and the plain-torch switch, one home

MARK_BEGIN, MARK_END = "<!-- bench_e2e: begin -->", "<!-- bench_e2e: end -->"
TARGETS = (0.5, 0.75, 0.875)

# name: (label, config name, transformer class, constructor kwargs, latent shape (B, C, F, H, W) or (B, F, C, H, W))
MODELS = {
    "wan1.3b": ("Wan2.1-1.3B 480p 81f", "wan2.1", "WanTransformer3DModel", dict(
        patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
        text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6), (1, 16, 21, 60, 104)),
    "wan14b": ("Wan2.1-14B 480p 81f", "wan2.1", "WanTransformer3DModel", dict(
        patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16, out_channels=16,
        text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6), (1, 16, 21, 60, 104)),
    "hunyuan": ("HunyuanVideo 544x960 129f", "hunyuan_video", "HunyuanVideoTransformer3DModel", dict(
        in_channels=16, out_channels=16, num_attention_heads=24, attention_head_dim=128, num_layers=20,
        num_single_layers=40, num_refiner_layers=2, mlp_ratio=4.0, patch_size=2, patch_size_t=1,
        qk_norm="rms_norm", guidance_embeds=True, text_embed_dim=4096, pooled_projection_dim=768,
        rope_theta=256.0, rope_axes_dim=(16, 56, 56)), (1, 16, 33, 68, 120)),
    "cogvideox1.5": ("CogVideoX1.5-5B 768x1360 81f", "cogvideox", "CogVideoXTransformer3DModel", dict(
        num_attention_heads=48, attention_head_dim=64, in_channels=16, out_channels=16, time_embed_dim=512,
        text_embed_dim=4096, num_layers=42, sample_width=300, sample_height=300, sample_frames=81, patch_size=2,
        patch_size_t=2, temporal_compression_ratio=4, max_text_seq_length=226, patch_bias=False,
        use_rotary_positional_embeddings=True, use_learned_positional_embeddings=False), (1, 22, 16, 96, 170)),
}


SMOKE = False  # --smoke: one layer, a small latent, CPU float32 (checks the script, times nothing real)


def _sync():
    if torch.cuda.is_available() and not SMOKE:
        torch.cuda.synchronize()


def build(name):
    """The transformer (eval, bf16, on CUDA, random weights), its forward kwargs (timestep excluded),
    the scheduler and the token grid."""
    import diffusers

    label, _, cls_name, kwargs, shape = MODELS[name]
    dev, dt = ("cpu", torch.float32) if SMOKE else ("cuda", torch.bfloat16)
    if SMOKE:
        kwargs = {**kwargs, **{k: 1 for k in ("num_layers", "num_single_layers", "num_refiner_layers") if k in kwargs}}
        shape = shape[:2] + (4, 8, 12) if cls_name != "CogVideoXTransformer3DModel" else (1, 4, 16, 8, 12)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dt)
    try:
        with torch.device(dev):  # weights are initialised on the GPU, in bf16 (seconds, not minutes)
            model = getattr(diffusers, cls_name)(**kwargs).eval()
    finally:
        torch.set_default_dtype(previous)
    g = torch.Generator(dev).manual_seed(0)
    x = torch.randn(shape, device=dev, dtype=dt, generator=g)
    if cls_name == "WanTransformer3DModel":
        sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=5.0)
        fw = dict(hidden_states=x, encoder_hidden_states=torch.randn(1, 512, 4096, device=dev, dtype=dt, generator=g))
        grid = (shape[2], shape[3] // 2, shape[4] // 2)
    elif cls_name == "HunyuanVideoTransformer3DModel":
        sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=7.0)
        mask = torch.zeros(1, 256, device=dev, dtype=torch.long)
        mask[:, :40] = 1  # a short prompt: 40 valid text tokens, 216 padding (the pipeline pads to 256)
        fw = dict(hidden_states=x, encoder_hidden_states=torch.randn(1, 256, 4096, device=dev, dtype=dt, generator=g),
                  encoder_attention_mask=mask, pooled_projections=torch.randn(1, 768, device=dev, dtype=dt, generator=g),
                  guidance=torch.tensor([6000.0], device=dev, dtype=dt))
        grid = (shape[2], shape[3] // 2, shape[4] // 2)
    else:
        from diffusers.models.embeddings import get_3d_rotary_pos_embed

        sched = diffusers.CogVideoXDPMScheduler(timestep_spacing="trailing")
        p, p_t = kwargs["patch_size"], kwargs["patch_size_t"]
        grid = (shape[1] // p_t, shape[3] // p, shape[4] // p)
        rope = get_3d_rotary_pos_embed(embed_dim=kwargs["attention_head_dim"], crops_coords=None,
                                       grid_size=grid[1:], temporal_size=grid[0], grid_type="slice",
                                       max_size=(kwargs["sample_height"] // p, kwargs["sample_width"] // p), device=dev)
        fw = dict(hidden_states=x, encoder_hidden_states=torch.randn(1, 226, 4096, device=dev, dtype=dt, generator=g),
                  image_rotary_emb=rope)
    sched.set_timesteps(50, device=dev)
    return model, fw, sched, grid


def forward(model, fw, sched, step):
    t = sched.timesteps[step]
    with torch.no_grad():
        return model(**fw, timestep=t.expand(1), return_dict=False)[0]


def timed(model, fw, sched, step, repeats):
    """(median seconds, peak bytes above the resident set, output finite)."""
    out = forward(model, fw, sched, step)  # warm-up: Triton compiles, cuDNN plans, autotune
    finite = bool(torch.isfinite(out).all())
    del out
    times = []
    cuda = torch.cuda.is_available() and not SMOKE
    peak = 0
    for _ in range(repeats):
        _sync()
        base = torch.cuda.memory_allocated() if cuda else 0
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        forward(model, fw, sched, step)
        _sync()
        times.append(time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated() - base if cuda else 0
    return statistics.median(times), peak, finite


SETTINGS = ("budget", "bundled", "fidelity", "all")


def variants(cfg_name, grid, text_len, setting="budget", targets=TARGETS, graphs=False, torch_rows=True):
    """(label, config or None for stock, kind, context factory or None) in the order of the table.

    ``setting``: ``"budget"`` (today's budget plans: chain and pairs, key-heavy), ``"fidelity"`` (the
    README's setting at each target, fused and, at 75%, the plain-torch scores; the pairs plan at 75% for
    comparison) or ``"all"``. ``graphs``: also the rows with ``cuda_graph=True`` (the pairs rows in budget, the fidelity
    rows and the 75% pairs row in fidelity)."""
    import timeripple
    from timeripple import detect, pairs

    base = timeripple.load_config(cfg_name, mode="channel")  # each variant sets its own options
    yield "stock", None, "stock", None
    yield "dense (processors)", base.replace(mode="token"), "dense", None
    for target in targets:
        try:
            b = detect.budget_for_pair_savings(target, grid, text_len=text_len)
            bq, bk = pairs.pair_budgets_for_pair_savings(target, grid, text_len=text_len)
        except ValueError as exc:  # the grid cannot reach this target (only tiny --smoke grids)
            print(f"  token {target:.1%}: skipped ({exc})")
            continue
        pairs_cfg = base.replace(mode="token", budget=max(bq, 1e-6), key_budget=bk, token_keys="pairs")
        if setting in ("budget", "all"):
            yield f"token {target:.1%} chain", base.replace(mode="token", budget=b), "reuse", None
            yield f"token {target:.1%} pairs", pairs_cfg, "reuse", None
            if graphs:
                yield f"token {target:.1%} pairs, cuda_graph", pairs_cfg.replace(cuda_graph=True), "reuse", None
        if setting in ("bundled", "fidelity", "all"):  # the bundled configs' plan at this target
            bundled = timeripple.load_config(cfg_name).replace(pair_savings=target)
            yield f"bundled {target:.1%} (pooled, key_share auto)", bundled, "reuse", None
            yield f"bundled {target:.1%} (pooled), compaction", bundled, "reuse", no_demotion
            yield f"bundled {target:.1%}, per head", bundled.replace(budget_scope="head"), "reuse", None
        if setting in ("fidelity", "all"):
            fid = base.replace(mode="token", pair_savings=target, **FIDELITY)
            yield f"fidelity {target:.1%}", fid, "reuse", None
            if graphs:
                yield f"fidelity {target:.1%}, cuda_graph", fid.replace(cuda_graph=True), "reuse", None
            if target == 0.75 and torch_rows:
                yield f"fidelity {target:.1%}, torch scores", fid, "reuse", torch_fidelity
            if target == 0.75 and setting == "fidelity":
                yield f"token {target:.1%} pairs", pairs_cfg, "reuse", None
                if graphs:
                    yield f"token {target:.1%} pairs, cuda_graph", pairs_cfg.replace(cuda_graph=True), "reuse", None
    if setting in ("budget", "all"):
        yield "channel", base, "reuse", None
    yield "attention free", base.replace(mode="token"), "free", None


@contextlib.contextmanager
def no_demotion():
    """The count-class path without demotion: plans whose class sizes differ per head run compaction
    (the path before issue 10's round 3), for a same-run baseline."""
    from timeripple.kernels import class_attention

    saved = class_attention.DEMOTE
    class_attention.DEMOTE = False
    try:
        yield
    finally:
        class_attention.DEMOTE = saved


def free_stand_in(q, k, v, **_):
    return v  # the self-attention core costs nothing: the ceiling of every attention speedup


def run_model(name, args):
    import timeripple

    label, cfg_name, _, _, _ = MODELS[name]
    t0 = time.perf_counter()
    model, fw, sched, grid = build(name)
    build_s = time.perf_counter() - t0
    text_len = {"wan2.1": 0, "hunyuan_video": 40, "cogvideox": 226}[cfg_name]
    cfg0 = timeripple.load_config(cfg_name)
    dense_steps = [i for i in range(50) if cfg0.attention_kwargs(i, 50) is None]
    reuse_step = next(i for i in range(50) if cfg0.attention_kwargs(i, 50) is not None) + 15
    rows = []
    for vlabel, cfg, kind, ctx in variants(cfg_name, grid, text_len, args.setting, args.targets,
                                                 args.graphs, not args.no_torch_rows):
        if cfg is not None:
            timeripple.apply_timeripple(model, cfg, scheduler=sched)
            if kind == "free":
                for proc in model.attn_processors.values():
                    if isinstance(proc, timeripple.TimeRippleAttnProcessor):
                        proc._attend = free_stand_in
        try:
            with ctx() if ctx is not None else contextlib.nullcontext():
                sec, peak, finite = timed(model, fw, sched, dense_steps[0] if kind == "dense" else reuse_step,
                                          args.repeats)
            savings = timeripple.get_stats(model).total_savings if kind == "reuse" else 0.0
        except Exception as exc:  # one failing variant must not lose the others
            sec, peak, finite, savings = float("nan"), float("nan"), False, float("nan")
            print(f"  {vlabel}: FAILED {exc!r:.300}", flush=True)
        finally:
            if cfg is not None:
                timeripple.remove_timeripple(model)
        rows.append(dict(label=vlabel, kind=kind, ms=sec * 1e3, peak_gib=peak / 2**30, finite=finite,
                         pair_savings=savings))
        print(f"  {vlabel}: {sec * 1e3:.0f} ms, peak +{peak / 2**30:.1f} GiB, finite {finite}, "
              f"savings {savings:.3f}", flush=True)
    result = dict(model=name, label=label, config=cfg_name, grid=grid, dense_steps=len(dense_steps),
                  reuse_step=reuse_step, build_s=build_s, rows=rows,
                  card="CPU smoke run" if SMOKE else torch.cuda.get_device_name(),
                  torch=torch.__version__, date=str(datetime.date.today()), command=" ".join(sys.argv),
                  repeats=args.repeats, size_buckets=args.size_buckets, size_grid=args.size_grid)
    if args.loop:
        result["loop"] = real_loop(model, fw, sched, cfg_name, grid, text_len, setting=args.setting,
                                   graphs=args.graphs, loop_targets=args.loop_targets, repeats=args.loop_repeats)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def real_loop(model, fw, sched, cfg_name, grid, text_len, target=0.75, setting="budget", graphs=False,
              loop_targets=None, repeats=1):
    """A real 50-step loop (one call per step, scheduler.step on the latents): stock vs token pairs
    (``setting="fidelity"``: vs the README's setting; ``"bundled"``: vs the bundled config as a user gets it,
    and with ``loop_targets`` also at those pair savings, pooled and per head; ``"budget"``: with
    ``loop_targets`` the pairs plan at those savings instead of ``target``).

    ``repeats`` loops per row, one after the other with the same config installed: ``s`` is the median of
    the loops after the first (a user's second video onwards), ``first_s`` the first (Triton compiles, cuDNN
    plans met for the first time). Every step is also timed with CUDA events (no sync inside the loop):
    ``step_ms`` per step of the last loop, so a gap between the loop and the composed per-step figure can be
    placed on the steps that make it."""
    import timeripple
    from timeripple import detect, pairs

    def pairs_cfg(p):
        bq, bk = pairs.pair_budgets_for_pair_savings(p, grid, text_len=text_len)
        return timeripple.load_config(cfg_name, mode="channel").replace(mode="token", budget=bq, key_budget=bk,
                                                                        token_keys="pairs")

    runs = [("stock", None)]
    if setting == "budget":
        runs += [(f"token {p:.1%} pairs", pairs_cfg(p)) for p in (loop_targets or [target])]
    elif setting == "fidelity":
        runs.append((f"fidelity {target:.0%}", timeripple.load_config(cfg_name, mode="channel").replace(
            mode="token", pair_savings=target, **FIDELITY)))
    else:  # bundled: as a user gets it, with its own pair_savings
        cfg = timeripple.load_config(cfg_name)
        runs.append((f"bundled default {cfg.pair_savings:.0%}", cfg))
        for p in loop_targets or ():
            runs += [(f"bundled {p:.1%}", cfg.replace(pair_savings=p)),
                     (f"bundled {p:.1%}, per head", cfg.replace(pair_savings=p, budget_scope="head"))]
    if graphs:
        runs = [(lb, c) if c is None else (lb + ", cuda_graph", c.replace(cuda_graph=True)) for lb, c in runs]
    cuda = torch.cuda.is_available() and not SMOKE
    out = {}
    for label, c in runs:
        if c is not None:
            timeripple.apply_timeripple(model, c, scheduler=sched)
        loops, step_ms = [], []
        for _ in range(max(1, repeats)):
            latents = fw["hidden_states"].clone()
            sched.set_timesteps(50, device=latents.device)
            events = []
            _sync()
            t0 = time.perf_counter()
            with torch.no_grad():
                for t in sched.timesteps:
                    if cuda:
                        events.append(torch.cuda.Event(enable_timing=True))
                        events[-1].record()
                    noise = model(**dict(fw, hidden_states=latents), timestep=t.expand(1), return_dict=False)[0]
                    latents = sched.step(noise, t, latents, return_dict=False)[0]
            if cuda:
                events.append(torch.cuda.Event(enable_timing=True))
                events[-1].record()
            _sync()
            loops.append(time.perf_counter() - t0)
            step_ms = [a.elapsed_time(b) for a, b in zip(events, events[1:])]
        warm = loops[1:] or loops
        out[label] = dict(s=statistics.median(warm), first_s=loops[0], loops_s=loops,
                          finite=bool(torch.isfinite(latents).all()), step_ms=step_ms)
        if c is not None:
            out[label]["pair_savings"] = timeripple.get_stats(model).total_savings
            timeripple.remove_timeripple(model)
        shown = {k: v for k, v in out[label].items() if k != "step_ms"}
        if step_ms and c is not None:
            dense = [i for i in range(len(step_ms)) if c.attention_kwargs(i, len(step_ms)) is None]
            reuse = [i for i in range(len(step_ms)) if i not in dense]
            shown["dense_steps_ms"] = round(statistics.mean(step_ms[i] for i in dense), 1)
            shown["reuse_steps_ms"] = (round(statistics.median(step_ms[i] for i in reuse), 1),
                                       round(min(step_ms[i] for i in reuse), 1), round(max(step_ms[i] for i in reuse), 1))
            shown["first_reuse_ms"] = round(step_ms[reuse[0]], 1) if reuse else None
        elif step_ms:
            shown["steps_ms"] = (round(statistics.median(step_ms), 1), round(min(step_ms), 1), round(max(step_ms), 1))
        print(f"  loop {label}: {shown}", flush=True)
    return out


# -- composition and report -----------------------------------------------------------------------------


def compose(result):
    """Per variant: (step speedup vs stock, 50-step speedup, 50-step ceiling) from one run's times."""
    rows = {r["label"]: r for r in result["rows"]}
    stock, dense, free = (rows[k]["ms"] for k in ("stock", "dense (processors)", "attention free"))
    nd = result["dense_steps"]
    nr = 50 - nd
    ceiling = 50 * stock / (nd * stock + nr * free)
    out = []
    for r in result["rows"]:
        step = stock / r["ms"]
        if r["kind"] == "reuse":
            total = 50 * stock / (nd * dense + nr * r["ms"])
        elif r["kind"] == "dense":
            total = stock / dense
        else:
            total = step if r["kind"] == "stock" else float("nan")
        out.append((r, step, total, ceiling))
    return out


def render(results):
    first = results[0]
    lines = [
        MARK_BEGIN,
        "## End to end: full-size random-weight transformers (`benchmarks/bench_e2e.py`)",
        "",
        f"* card: {first['card']}; torch {first['torch']}; dates: {', '.join(sorted({r['date'] for r in results}))}",
        "* timed: wall clock of one transformer forward (bf16, batch 1, random weights at the real config) "
        "between CUDA syncs, median of the run's `--repeats` after a warm-up; every speedup is against `stock` "
        "(diffusers as installed) from the same run. 50 steps composed from the config's schedule (its dense "
        "steps at the `dense (processors)` time, the other steps at the row's time); the ceiling composes "
        "stock dense steps with free self-attention (`attention free`). Counted: pair savings recorded in "
        "the timed reuse step. Peak: extra `max_memory_allocated` in one forward over the resident "
        "weights and inputs, relative to stock.",
        "",
    ]
    for res in results:
        lines += [f"### {res['label']}: grid {tuple(res['grid'])}, {res['dense_steps']} dense steps of 50 "
                  f"(bundled `{res['config']}` schedule), reuse step timed: {res['reuse_step']}", "",
                  f"`python {res['command']}` (median of {res['repeats']})" + (f"; {res['note']}" if res.get("note") else ""),
                  "",
                  "| variant | ms per step | step speedup | 50 steps | ceiling | peak vs stock | pair savings | finite |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        stock_peak = res["rows"][0]["peak_gib"]
        for r, step, total, ceiling in compose(res):
            tot = "" if math.isnan(total) else f"{total:.2f}x"
            ceil = f"{ceiling:.2f}x" if r["kind"] in ("reuse", "free") else ""
            sav = f"{r['pair_savings']:.1%}" if r["kind"] == "reuse" and r["label"].startswith(("token", "fidelity")) else ""
            peak = r["peak_gib"] / stock_peak if stock_peak else float("nan")
            lines.append(f"| {r['label']} | {r['ms']:.0f} | {step:.2f}x | {tot} | {ceil} | {peak:.2f}x | {sav} | "
                         f"{'yes' if r['finite'] else 'NO'} |")
        if "loop" in res:
            loop = res["loop"]
            (sl, s), *others = list(loop.items())
            if len(s.get("loops_s", ())) > 1:
                lines += ["", f"Each loop row: the median of {len(s['loops_s']) - 1} loop(s) after a first one "
                          "with the same config (first loops: " + ", ".join(
                              f"{lb} {r['first_s']:.1f} s" for lb, r in loop.items()) + ")."]
            lines += ["", f"Real 50-step loop (one call per step, FlowMatch Euler): {sl} {s['s']:.1f} s; " + "; ".join(
                f"{tl} {t['s']:.1f} s: **{s['s'] / t['s']:.2f}x** (pair savings over the run "
                f"{t.get('pair_savings', float('nan')):.1%}, counted; latents finite: {t['finite']})" for tl, t in others)
                + "."]
        lines.append("")
    lines.append(MARK_END)
    return "\n".join(lines)


def write_section(path, section):
    try:
        text = open(path).read()
    except FileNotFoundError:
        text = ""
    if MARK_BEGIN in text and MARK_END in text:
        head, rest = text.split(MARK_BEGIN, 1)
        text = head + section + rest.split(MARK_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    with open(path, "w") as fh:
        fh.write(text)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=[], choices=list(MODELS))
    parser.add_argument("--repeats", type=int, default=2, help="timed forwards per variant (after a warm-up)")
    parser.add_argument("--loop", action="store_true", help="also a real 50-step loop (Wan2.1-1.3B only)")
    parser.add_argument("--targets", nargs="+", type=float, default=list(TARGETS), help="pair-savings targets")
    parser.add_argument("--graphs", action="store_true", help="also the token rows with cuda_graph=True")
    parser.add_argument("--no-torch-rows", action="store_true", help="skip the plain-torch fidelity row")
    parser.add_argument("--setting", default="budget", choices=SETTINGS,
                        help="budget: today's budget plans; fidelity: the README's quality setting; all: both")
    parser.add_argument("--json", default="", help="write the raw results here")
    parser.add_argument("--render", nargs="*", default=None, help="JSON files to render (no GPU needed)")
    parser.add_argument("--out", default="", help="markdown file whose end-to-end section is (re)written")
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run that checks the script only")
    parser.add_argument("--size-grid", type=int, default=0,
                        help="class_attention.SIZE_GRID for the token rows (0: off). cuDNN's plan cache lives as "
                             "long as the process: compare values in separate processes, --loop first")
    parser.add_argument("--size-buckets", type=int, default=None,
                        help="class_attention.SIZE_BUCKETS for the token rows (0: off; default: the library's)")
    parser.add_argument("--loop-targets", nargs="*", type=float, default=[],
                        help="with --setting bundled: the loop also runs the bundled config at these pair "
                             "savings, pooled and per head; with --setting budget: the pairs plan at these "
                             "savings (default: 0.75)")
    parser.add_argument("--loop-repeats", type=int, default=1,
                        help="loops per row of the real loop: the figure is the median after the first "
                             "(the first, with its compiles and first cuDNN plans, is kept as first_s)")
    args = parser.parse_args(argv)
    global SMOKE
    SMOKE = args.smoke
    from timeripple.kernels import class_attention

    if args.size_grid:
        class_attention.SIZE_GRID = args.size_grid
    if args.size_buckets is not None:
        class_attention.SIZE_BUCKETS = args.size_buckets
    args.size_buckets = class_attention.SIZE_BUCKETS  # recorded with the run
    if args.render is not None:
        results = [r for path in args.render for r in json.load(open(path))]
    else:
        if not (torch.cuda.is_available() or SMOKE):
            sys.exit("bench_e2e.py needs a CUDA device (or --render, --smoke)")
        card = "CPU smoke run" if SMOKE else torch.cuda.get_device_name()
        print(f"card: {card}; torch {torch.__version__}; args {vars(args)}", flush=True)
        results = []
        for name in args.models:
            print(f"{name}:", flush=True)
            args_loop = args.loop and name == "wan1.3b"
            results.append(run_model(name, argparse.Namespace(**{**vars(args), "loop": args_loop})))
            if args.json:  # after every model, so a run cut short keeps what it measured
                json.dump(results, open(args.json, "w"), indent=1)
    section = render(results)
    print(section)
    if args.out:
        write_section(args.out, section)


if __name__ == "__main__":
    main()
