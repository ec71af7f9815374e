#!/usr/bin/env python
"""Train the embedded tiny text-to-video model of `timeripple.demo` with flow matching.

Rectified flow: ``x_t = (1 - s) x0 + s noise``, the model predicts ``noise - x0``; noise levels ``s``
are logit-normal then shifted like the pipeline's scheduler (``SHIFT``). Captions are dropped 10% of
the time (classifier-free guidance). Clips are rendered on the fly on the training device. Seeded:
the same command on the same hardware gives the same run; ``--resume`` continues from the
checkpoint in ``--out`` exactly where it stopped.

    python tools/train_tiny_t2v.py --out runs/tiny --max-minutes 10 --export src/timeripple/demo/weights

At the end (or when ``--max-minutes`` is reached) it exports EMA weights as safetensors + configs,
the loss curve (JSON + PNG), measures prompt adherence on the fixed 20 prompts and writes MODEL_CARD.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from timeripple.demo.clips import render_clips, sample_params
from timeripple.demo.loading import save_tiny_weights
from timeripple.demo.model import HEIGHT, NUM_FRAMES, SHIFT, WIDTH, build_tiny_transformer, with_frame_clock
from timeripple.demo.text import build_text_encoder


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="run folder: checkpoint.pt, training_log.json")
    p.add_argument("--export", default=None, help="weights folder to write (default: OUT/weights)")
    p.add_argument("--steps", type=int, default=100_000, help="stop after this many optimizer steps")
    p.add_argument("--max-minutes", type=float, default=None, help="stop cleanly (and export) after this long")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--warmup", type=int, default=300, help="linear warm-up steps")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay of the exported weights")
    p.add_argument("--text-dropout", type=float, default=0.1, help="caption drop rate (for CFG)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--ckpt-minutes", type=float, default=3.0, help="checkpoint period")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument(
        "--init-from", default=None,
        help="warm-start model and EMA from an exported weights folder (e.g. src/timeripple/demo/weights; "
        "fresh optimizer, steps continue from its training_log.json)",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--eval-steps", type=int, default=25, help="sampling steps of the adherence check (0 = skip)")
    p.add_argument("--eval-guidance", type=float, default=5.0)
    return p.parse_args(argv)


def sample_sigmas(n, generator, device):
    """Logit-normal noise levels, shifted as FlowMatchEulerDiscreteScheduler(shift=SHIFT) does."""
    u = torch.sigmoid(torch.randn(n, generator=generator, device=device))
    return SHIFT * u / (1 + (SHIFT - 1) * u)


def widen_state_dict(target: torch.nn.Module, state: dict) -> dict:
    """Fit ``state`` into ``target`` where only input channels were added (the frame clock).

    A weight whose dim 1 is smaller than the target's (the patch embedding of a model trained without
    the clock) is padded with zeros there, so the warm-started model computes exactly what the old one
    did until training moves the new weights.
    """
    wanted = target.state_dict()
    fitted = {}
    for name, value in state.items():
        shape = wanted[name].shape
        if value.shape != shape and value.dim() >= 2 and value.shape[0] == shape[0] and value.shape[2:] == shape[2:]:
            pad = torch.zeros(shape, dtype=value.dtype, device=value.device)
            pad[:, : value.shape[1]] = value
            print(f"widened {name}: {tuple(value.shape)} -> {tuple(shape)} (new inputs start at zero)", flush=True)
            value = pad
        fitted[name] = value
    return fitted


def training_batch(args, cpu_gen, dev_gen, tokenizer, device, transformer_config):
    params = sample_params(args.batch_size, cpu_gen)
    x0 = render_clips(params, device=device).permute(0, 2, 1, 3, 4)  # (B, 3, F, H, W)
    drop = torch.rand(args.batch_size, generator=cpu_gen) < args.text_dropout
    captions = ["" if d else p.caption for p, d in zip(params, drop.tolist())]
    ids = tokenizer(captions).to(device)
    noise = torch.randn(x0.shape, generator=dev_gen, device=device)
    sigma = sample_sigmas(args.batch_size, dev_gen, device)
    s = sigma.view(-1, 1, 1, 1, 1)
    xt = (1 - s) * x0 + s * noise
    return with_frame_clock(xt, transformer_config), sigma * 1000.0, ids, noise - x0


def save_plot(log, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in log]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, [r["loss"] for r in log], lw=1)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("flow-matching MSE (mean over log window)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.set_title("tiny text-to-video: training loss")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_card(path, args, state, adherence, device_name):
    last = state["log"][-1]["loss"] if state["log"] else float("nan")
    acc = adherence or {}
    lines = [
        "# Tiny text-to-video model (timeripple demo)",
        "",
        "A ~3 M parameter pixel-space `WanTransformer3DModel` (diffusers) plus a small word-level text",
        "encoder, trained from scratch with flow matching on procedurally generated clips. It exists to",
        "exercise and judge TimeRipple offline on a CPU; it is not a general video model.",
        "",
        "## Data",
        "The input is RGB plus a frame-clock channel (-1 on the first frame to +1 on the last), the",
        "model's only absolute time cue; the output is RGB.",
        "",
        "Procedural clips from `timeripple.demo.clips`: 9 frames of 32x32 RGB, one shape (circle, square,",
        "triangle) of 7 colours moving left/right/up/down at 1 or 2 px/frame over a plain, gradient or",
        "checker-textured background of 7 dark colours, captioned from the parameters (e.g. \"a red circle",
        "moving right quickly on a gray gradient background\"). Fresh random clips every step.",
        "",
        "## Training",
        "- commands, in order (resumed runs continue the same seeded run):",
        *(f"  - `{c}`" for c in state["commands"]),
        f"- device: {device_name}; torch {torch.__version__}; bf16 autocast on CUDA",
        f"- optimizer steps: {state['step']}, batch {args.batch_size} ({state['step'] * args.batch_size:,} clips)",
        f"- wall time: {state['seconds'] / 60:.1f} min; final logged loss {last:.4f}",
        f"- AdamW lr {args.lr} (warm-up {args.warmup}), weight decay {args.weight_decay}, EMA {args.ema}"
        " (the exported weights are the EMA)",
        f"- rectified flow, target `noise - x0`, logit-normal noise levels shifted by {SHIFT},"
        f" caption dropout {args.text_dropout}, seed {args.seed}",
        "- weights stored in float16 (`model.safetensors`); load with `timeripple.demo.load_tiny_pipeline()`",
        "",
        "![loss curve](loss_curve.png)",
        "",
        "## Measured prompt adherence",
        f"Fixed 20 prompts of `timeripple.eval.ADHERENCE_PROMPTS`, {args.eval_steps} steps, guidance"
        f" {args.eval_guidance}, on {device_name}:",
        "",
        "| colour | shape | direction | all three |",
        "| --- | --- | --- | --- |",
        "| {} | {} | {} | {} |".format(
            *(f"{acc[k]:.0%}" if k in acc else "n/a" for k in ("colour", "shape", "direction", "all"))
        ),
        "",
        "## Limitations",
        "- Only 9 frames of 32x32 pixels; only the caption vocabulary above (other words are ignored).",
        "- One shape per clip, straight motion, no occlusion, no camera motion; tiny capacity.",
        "- Quality figures on this model say how well TimeRipple preserves a learned model's output,",
        "  not how a large model would look.",
    ]
    Path(path).write_text("\n".join(lines) + "\n")


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    export = Path(args.export) if args.export else out / "weights"
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    tokenizer, text_encoder = build_text_encoder()
    transformer = build_tiny_transformer()
    models = torch.nn.ModuleDict({"transformer": transformer, "text_encoder": text_encoder}).to(device)
    ema = copy.deepcopy(models).requires_grad_(False)
    opt = torch.optim.AdamW(models.parameters(), lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.99))
    cpu_gen = torch.Generator().manual_seed(args.seed)
    dev_gen = torch.Generator(device=device).manual_seed(args.seed + 1)
    state = {"step": 0, "seconds": 0.0, "log": []}

    ckpt_path = out / "checkpoint.pt"
    if args.init_from and not args.resume:
        from timeripple.demo.loading import load_tiny_components

        parts = load_tiny_components(args.init_from, device=device)
        models["transformer"].load_state_dict(widen_state_dict(models["transformer"], parts["transformer"].state_dict()))
        models["text_encoder"].load_state_dict(parts["text_encoder"].state_dict())
        ema.load_state_dict(models.state_dict())
        previous = Path(args.init_from) / "training_log.json"
        if previous.is_file():
            old = json.loads(previous.read_text())
            state.update(step=old["steps"], seconds=old["seconds"], log=old["loss"],
                         commands=old.get("commands", []))
        state["warmup_from"] = state["step"]
        print(f"warm start from {args.init_from} at step {state['step']}", flush=True)
    if args.resume:
        if not ckpt_path.is_file():
            sys.exit(f"--resume: no checkpoint at {ckpt_path}")
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        models.load_state_dict(ckpt["models"])
        ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["opt"])
        cpu_gen.set_state(ckpt["cpu_gen"].cpu())  # generator states are CPU byte tensors
        dev_gen.set_state(ckpt["dev_gen"].cpu())
        state = ckpt["state"]
        print(f"resumed at step {state['step']}", flush=True)

    def checkpoint():
        torch.save(
            {"models": models.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
             "cpu_gen": cpu_gen.get_state(), "dev_gen": dev_gen.get_state(), "state": state, "args": vars(args)},
            ckpt_path,
        )

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    argv_text = "python tools/train_tiny_t2v.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    state.setdefault("commands", []).append(f"{argv_text}  # on {device_name}")
    n_params = sum(p.numel() for p in models.parameters())
    print(f"device {device_name}; {n_params / 1e6:.2f} M parameters; batch {args.batch_size}", flush=True)

    start = time.time()
    seconds0 = state["seconds"]
    last_ckpt = start
    window = []
    models.train()
    while state["step"] < args.steps:
        elapsed = time.time() - start
        if args.max_minutes is not None and elapsed > args.max_minutes * 60:
            print(f"--max-minutes reached after {state['step']} steps", flush=True)
            break
        # warm-up restarts with a warm start's fresh optimizer ("warmup_from"), not with --resume
        lr = args.lr * min(1.0, (state["step"] - state.get("warmup_from", 0) + 1) / args.warmup)
        for group in opt.param_groups:
            group["lr"] = lr
        xt, timestep, ids, target = training_batch(args, cpu_gen, dev_gen, tokenizer, device, transformer.config)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            text = models["text_encoder"](ids)
            pred = models["transformer"](
                hidden_states=xt, timestep=timestep, encoder_hidden_states=text, return_dict=False
            )[0]
        loss = F.mse_loss(pred.float(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(models.parameters(), 1.0)
        opt.step()
        state["step"] += 1
        decay = min(args.ema, (1 + state["step"]) / (10 + state["step"]))
        with torch.no_grad():
            for e, p in zip(ema.parameters(), models.parameters()):
                e.lerp_(p, 1 - decay)
        window.append(loss.detach())
        if state["step"] % args.log_every == 0:
            mean = torch.stack(window).mean().item()
            window = []
            state["seconds"] = seconds0 + time.time() - start
            state["log"].append({"step": state["step"], "loss": mean, "seconds": round(state["seconds"], 1)})
            print(f"step {state['step']:6d}  loss {mean:.4f}  lr {lr:.2e}  {state['seconds']:.0f}s", flush=True)
        if time.time() - last_ckpt > args.ckpt_minutes * 60:
            checkpoint()
            last_ckpt = time.time()
    state["seconds"] = seconds0 + time.time() - start
    checkpoint()

    # -- export the EMA weights, the loss curve, the adherence and the card --------------------------
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(shift=SHIFT)
    ema.eval()
    save_tiny_weights(export, ema["transformer"], ema["text_encoder"], scheduler)
    save_plot(state["log"], export / "loss_curve.png")
    adherence = None
    if args.eval_steps > 0:
        from timeripple.demo import load_tiny_pipeline
        from timeripple.demo.adherence import evaluate_adherence

        pipe = load_tiny_pipeline(device=device, weights_dir=export)  # the exported float16 weights
        pipe.set_progress_bar_config(disable=True)
        t0 = time.time()
        adherence = evaluate_adherence(pipe, num_inference_steps=args.eval_steps, guidance_scale=args.eval_guidance)
        print(f"adherence ({time.time() - t0:.1f}s): " + ", ".join(
            f"{k} {adherence[k]:.0%}" for k in ("colour", "shape", "direction", "all")), flush=True)
    log = {"args": vars(args), "device": device_name, "steps": state["step"], "seconds": state["seconds"],
           "commands": state["commands"], "loss": state["log"], "adherence": adherence}
    (export / "training_log.json").write_text(json.dumps(log, indent=1, default=str))
    write_card(export / "MODEL_CARD.md", args, state, adherence, device_name)
    print(f"exported to {export} ({os.path.getsize(export / 'model.safetensors') / 1e6:.1f} MB)", flush=True)


if __name__ == "__main__":
    main()
