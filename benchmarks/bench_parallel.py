"""Transformer-step benchmark of TimeRipple under Ulysses context parallelism (issue 15): 1, 2, 4 GPUs.

One full-size random-weight transformer forward (no VAE, no text encoder) per row, dense and TimeRipple
token mode at 75% / 87.5% counted pair savings, under ``timeripple.enable_context_parallel`` with
``ulysses_degree`` = the world size (1 rank: no parallelism). Run it once per GPU count; each run adds its
rows to a JSON file, and ``--table`` prints the scaling table (and ``--write`` puts it in BENCHMARKS.md)::

    for n in 1 2 4; do torchrun --nproc-per-node $n benchmarks/bench_parallel.py --results parallel.json; done
    python benchmarks/bench_parallel.py --table parallel.json --write BENCHMARKS.md

    # dry run on 2 CPU ranks with tiny models (proves the script runs; the figures mean nothing)
    torchrun --nproc-per-node 2 benchmarks/bench_parallel.py --tiny --backend gloo --results /tmp/p.json

Timed: the median over ``--reps`` forwards after ``--warmup`` of the slowest rank's wall-clock (CUDA
synchronised, a barrier before each forward), in ms. Counted: the q·kᵀ pair savings of the step (the mean
of the ranks' figures). Random weights have no smooth q/k, so the TimeRipple rows set the threshold so high
that every token is eligible and the token budget alone sets the savings (speed at a given savings level;
quality is measured elsewhere).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time

import torch
import torch.distributed as dist

# name: (family, model class, config overrides, latent shape (C, F, H, W), text tokens, note)
MODELS = {
    "wan1.3b-480p": ("wan", dict(num_attention_heads=12, ffn_dim=8960, num_layers=30), (16, 21, 60, 104), 512,
                     "Wan2.1-1.3B 480x832 81f"),
    "wan1.3b-720p": ("wan", dict(num_attention_heads=12, ffn_dim=8960, num_layers=30), (16, 21, 90, 160), 512,
                     "Wan2.1-1.3B 720x1280 81f"),
    "wan14b-480p": ("wan", {}, (16, 21, 60, 104), 512, "Wan2.1-14B 480x832 81f"),
    "wan14b-720p": ("wan", {}, (16, 21, 90, 160), 512, "Wan2.1-14B 720x1280 81f"),
    "hunyuan-544p": ("hunyuan_video", {}, (16, 33, 68, 120), 256, "HunyuanVideo 544x960 129f"),
}
TINY = {  # the same classes, tiny: for the CPU dry run
    "wan-tiny": ("wan", dict(num_attention_heads=4, attention_head_dim=16, ffn_dim=64, num_layers=2, text_dim=32,
                             freq_dim=32), (16, 3, 8, 12), 16, "tiny Wan"),
    "hunyuan-tiny": ("hunyuan_video", dict(num_attention_heads=4, attention_head_dim=16, num_layers=1,
                                           num_single_layers=1, num_refiner_layers=1, text_embed_dim=32,
                                           pooled_projection_dim=8, rope_axes_dim=(4, 6, 6)), (16, 3, 8, 12), 16,
                     "tiny HunyuanVideo"),
}
TARGETS = (0.75, 0.875)
NUM_STEPS, STEP = 50, 25  # a reuse step of the bundled schedules


def build(family, overrides, device, dtype):
    from diffusers import HunyuanVideoTransformer3DModel, WanTransformer3DModel

    cls = WanTransformer3DModel if family == "wan" else HunyuanVideoTransformer3DModel
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # a 14B model built in fp32 first would need twice the memory
    try:
        with torch.device(device):
            model = cls(**overrides).eval()
    finally:
        torch.set_default_dtype(default)
    for name, module in model.named_modules():  # as `from_pretrained(torch_dtype=...)` keeps them
        if any(key in name.split(".") for key in (model._keep_in_fp32_modules or ())):
            module.to(torch.float32)
    return model


def inputs_for(family, model, latent, text_len, device, dtype):
    g = torch.Generator(device="cpu").manual_seed(1)
    x = dict(hidden_states=torch.randn(1, *latent, generator=g).to(device, dtype),
             encoder_hidden_states=torch.randn(1, text_len, model.config.get("text_dim") or
                                               model.config.text_embed_dim, generator=g).to(device, dtype))
    if family == "hunyuan_video":
        x.update(encoder_attention_mask=torch.ones(1, text_len, dtype=torch.long, device=device),
                 pooled_projections=torch.randn(1, model.config.pooled_projection_dim, generator=g).to(device, dtype),
                 guidance=torch.tensor([6000.0], device=device, dtype=dtype))
    return x


def grid_of(family, model, latent):
    _, f, h, w = latent
    if family == "wan":
        p_t, p_h, p_w = model.config.patch_size
        return f // p_t, h // p_h, w // p_w
    return f // model.config.patch_size_t, h // model.config.patch_size, w // model.config.patch_size


def timed(fn, device, warmup, reps):
    """Median over ``reps`` of the slowest rank's wall-clock of ``fn()`` (ms)."""
    times = []
    for i in range(warmup + reps):
        dist.barrier()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = torch.tensor([time.perf_counter() - start], dtype=torch.float64, device=device)
        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
        if i >= warmup:
            times.append(elapsed.item() * 1e3)
    return statistics.median(times)


def run_model(name, spec, args, device, dtype, world):
    import timeripple
    from diffusers import ContextParallelConfig, FlowMatchEulerDiscreteScheduler
    from timeripple.detect import budget_for_pair_savings

    family, overrides, latent, text_len, note = spec
    model = build(family, overrides, device, dtype)
    if world > 1:
        timeripple.enable_context_parallel(model, ContextParallelConfig(ulysses_degree=world))
    x = inputs_for(family, model, latent, text_len, device, dtype)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=7.0)
    scheduler.set_timesteps(NUM_STEPS)
    timestep = scheduler.timesteps[STEP : STEP + 1].to(device)
    grid = grid_of(family, model, latent)
    joint_text = text_len if family == "hunyuan_video" else 0

    def forward():
        with torch.no_grad():
            model(**x, timestep=timestep, return_dict=False)

    rows = [dict(model=name, note=note, world=world, method="dense", ms=timed(forward, device, args.warmup,
                                                                              args.reps), savings=0.0)]
    base = timeripple.load_config("wan2.1" if family == "wan" else "hunyuan_video", mode="channel")
    for target in TARGETS:
        budget = budget_for_pair_savings(target, grid, text_len=joint_text)
        config = base.replace(mode="token", budget=min(budget, 1.0), threshold_start=1e6, threshold_end=1e6,
                              reference_num_steps=NUM_STEPS)
        timeripple.apply_timeripple(model, config, scheduler=scheduler)
        ms = timed(forward, device, args.warmup, args.reps)
        savings = torch.tensor([timeripple.get_stats(model).total_savings], dtype=torch.float64, device=device)
        dist.all_reduce(savings)
        timeripple.remove_timeripple(model)
        rows.append(dict(model=name, note=note, world=world, method=f"token {target:.1%}", ms=ms,
                         savings=savings.item() / world))
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def render(rows, machine) -> str:
    """The scaling table: per model and method, ms per step on 1/2/4 ranks, the speedup over dense on the
    same rank count, and the share of the 1-rank TimeRipple speedup each rank count keeps (``s_W / s_1``;
    issue 15's target is at least 90% on 2 GPUs)."""
    worlds = sorted({r["world"] for r in rows})
    lines = [f"Machine: {machine}.", "",
             "| model | method | " + " | ".join(f"{w} rank(s) ms" for w in worlds) + " | counted savings | "
             + " | ".join(f"speedup vs dense ({w})" for w in worlds) + " | kept of the 1-rank speedup |",
             "|" + "---|" * (3 + 2 * len(worlds) + 1)]
    table = {(r["model"], r["method"], r["world"]): r for r in rows}
    for model in dict.fromkeys(r["model"] for r in rows):
        for method in dict.fromkeys(r["method"] for r in rows if r["model"] == model):
            cells = [table.get((model, method, w)) for w in worlds]
            ms = [f"{c['ms']:.1f}" if c else "–" for c in cells]
            speed = []
            for w, c in zip(worlds, cells):
                dense = table.get((model, "dense", w))
                speed.append(dense["ms"] / c["ms"] if c and dense else None)
            kept = "–"
            if speed[0] and speed[-1] and method != "dense" and worlds[0] == 1 and len(worlds) > 1:
                kept = ", ".join(f"{s / speed[0]:.0%} ({w})" for w, s in zip(worlds[1:], speed[1:]) if s)
            saving = next((c["savings"] for c in cells if c), 0.0)
            lines.append(f"| {model} | {method} | " + " | ".join(ms) + f" | {saving:.1%} | "
                         + " | ".join(f"{s:.2f}x" if s else "–" for s in speed) + f" | {kept} |")
    return "\n".join(lines)


def write_section(path, text, command):
    start, end = "<!-- bench_parallel:start -->", "<!-- bench_parallel:end -->"
    section = f"{start}\n## Context parallelism (Ulysses), transformer step\n\n`{command}`\n\n{text}\n{end}"
    old = open(path).read() if os.path.exists(path) else ""
    if start in old and end in old:
        new = old[: old.index(start)] + section + old[old.index(end) + len(end):]
    else:
        new = old.rstrip("\n") + "\n\n" + section + "\n"
    with open(path, "w") as fh:
        fh.write(new)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=None, help=f"of {list(MODELS)} (default: all)")
    parser.add_argument("--tiny", action="store_true", help="tiny models (dry run on CPU ranks)")
    parser.add_argument("--backend", default=None, help="nccl (default with CUDA) or gloo")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--results", default="bench_parallel.json", help="JSON file the rows are added to")
    parser.add_argument("--table", default=None, help="render the table of this JSON file and exit")
    parser.add_argument("--write", default=None, help="with --table: put the table into this markdown file")
    args = parser.parse_args(argv)
    if args.table:
        data = json.load(open(args.table))
        text = render(data["rows"], data["machine"])
        print(text)
        if args.write:
            write_section(args.write, text, " ; ".join(data["commands"]))
            print(f"wrote {args.write}")
        return data
    backend = args.backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        device, dtype = torch.device("cuda", local), torch.bfloat16
        dist.init_process_group("nccl", device_id=device)
    else:
        device, dtype = torch.device("cpu"), torch.float32
        dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    specs = TINY if args.tiny else MODELS
    names = args.models or list(specs)
    if device.type == "cuda":
        machine = f"{torch.cuda.get_device_name()} x{world}"
    else:
        machine = f"CPU ({platform.machine()}, {os.cpu_count()} cores)"
    machine += f", torch {torch.__version__}, {backend}, {datetime.date.today()}"
    if rank == 0:
        print(f"device: {machine}; args: {vars(args)}", flush=True)
    rows = []
    try:
        for name in names:
            rows += run_model(name, specs[name], args, device, dtype, world)
            if rank == 0:
                print("\n".join(f"{r['model']} {r['world']} rank(s) {r['method']}: {r['ms']:.1f} ms, counted "
                                f"savings {r['savings']:.1%}" for r in rows if r["model"] == name), flush=True)
    finally:
        dist.destroy_process_group()
    if rank == 0:
        data = json.load(open(args.results)) if os.path.exists(args.results) else {"rows": [], "commands": []}
        data["rows"] = [r for r in data["rows"] if not (r["world"] == world and r["model"] in names)] + rows
        data["machine"] = machine.replace(f" x{world}", "")
        command = f"torchrun --nproc-per-node {world} benchmarks/bench_parallel.py " + " ".join(
            a for a in (argv if argv is not None else __import__("sys").argv[1:]))
        data["commands"] = [c for c in data["commands"] if f"--nproc-per-node {world} " not in c] + [command]
        with open(args.results, "w") as fh:
            json.dump(data, fh, indent=1)
        print(render(data["rows"], data["machine"]))
    return rows


if __name__ == "__main__":
    main()
