"""Several GPUs with Ulysses context parallelism: one video, dense and with TimeRipple, on every rank.

Each rank holds 1/N of the tokens (video and text) and all the weights; attention runs over the whole
sequence for 1/N of the heads. ``timeripple.enable_context_parallel`` installs the parallel plan (Wan:
diffusers' own; HunyuanVideo and CogVideoX: TimeRipple's), TimeRipple is applied on top, and rank 0 saves
both videos and prints the savings (the mean of the ranks' figures) and both wall-clock times.

    torchrun --nproc-per-node 2 examples/multi_gpu.py --family wan
    torchrun --nproc-per-node 4 examples/multi_gpu.py --family hunyuan_video --mode token
    torchrun --nproc-per-node 2 examples/multi_gpu.py --family cogvideox
    torchrun --nproc-per-node 2 examples/multi_gpu.py --family wan --tiny    # tiny random model, CPU, gloo

The token counts must split evenly over the ranks (CogVideoX-5b at 480x720x49 has 17,550 video and 226
text tokens: 2 ranks). The real checkpoints need the internet once; ``--tiny`` runs offline in seconds.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist

import timeripple
from _common import TINY, TINY_CONFIG, load_pipeline, psnr, save_video

# family -> (checkpoint, bundled config, pipeline class, size used here)
REAL = {
    "wan": ("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "wan2.1", "WanPipeline", dict(height=480, width=832, num_frames=81)),
    "hunyuan_video": ("hunyuanvideo-community/HunyuanVideo", "hunyuan_video", "HunyuanVideoPipeline",
                      dict(height=544, width=960, num_frames=61)),
    "cogvideox": ("THUDM/CogVideoX-5b", "cogvideox", "CogVideoXPipeline", dict(height=480, width=720, num_frames=49)),
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=sorted(REAL), default="wan")
    parser.add_argument("--model", default=None, help="Hub id or local path (default: the family's checkpoint)")
    parser.add_argument("--mode", choices=("channel", "token"), default="token", help="TimeRipple mode")
    parser.add_argument("--prompt", default="A red fox running through fresh snow at sunrise, cinematic.")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="outputs")
    parser.add_argument("--tiny", action="store_true", help="tiny random model on CPU ranks over gloo")
    return parser.parse_args(argv)


def setup(tiny: bool) -> torch.device:
    """Join the process group torchrun describes; one GPU per rank (NCCL), or CPU ranks (gloo)."""
    if tiny or not torch.cuda.is_available():
        dist.init_process_group("gloo")
        return torch.device("cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank))
    return torch.device("cuda", local_rank)


def load(args, device):
    if args.tiny:
        pipe, inputs = TINY[args.family]()  # 2 or 4 heads: 2 ranks
        config = timeripple.load_config(REAL[args.family][1]).replace(mode=args.mode, **TINY_CONFIG)
        return pipe, inputs, config, min(args.steps, 4)
    checkpoint, config_name, pipeline, size = REAL[args.family]
    pipe, inputs = load_pipeline(pipeline, argparse.Namespace(model=args.model or checkpoint, prompt=args.prompt))
    pipe.to(device)
    if hasattr(pipe.vae, "enable_tiling"):
        pipe.vae.enable_tiling()
    inputs.update(size)
    return pipe, inputs, timeripple.load_config(config_name).replace(mode=args.mode), args.steps


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = setup(args.tiny)
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        from diffusers import ContextParallelConfig

        pipe, inputs, config, steps = load(args, device)
        inputs.update(num_inference_steps=steps, output_type="pt")
        timeripple.enable_context_parallel(pipe.transformer, ContextParallelConfig(ulysses_degree=world))

        def generate():
            dist.barrier()
            start = time.perf_counter()
            generator = torch.Generator("cpu").manual_seed(args.seed)  # the same noise on every rank
            frames = pipe(**inputs, generator=generator).frames[0]  # (F, C, H, W)
            if device.type == "cuda":
                torch.cuda.synchronize()
            return frames.float().clamp(0, 1).cpu(), time.perf_counter() - start

        dense, dense_s = generate()
        timeripple.apply_timeripple(pipe, config)  # after enable_context_parallel: the processors join it
        ripple, ripple_s = generate()
        # every rank counted its own heads over the whole sequence; the model's figure is their mean
        savings = torch.tensor([timeripple.get_stats(pipe).total_savings], dtype=torch.float64)
        dist.all_reduce(savings)
        savings = savings.item() / world
        timeripple.remove_timeripple(pipe)
        result = {"world": world, "qk_savings": savings, "psnr_db": psnr(dense, ripple), "dense_s": dense_s,
                  "timeripple_s": ripple_s}
        if rank == 0:
            os.makedirs(args.out, exist_ok=True)
            result["paths"] = [save_video(v, os.path.join(args.out, f"{args.family}_cp{world}_{name}"))
                               for name, v in (("dense", dense), ("timeripple", ripple))]
            print(f"{args.family}, {world} ranks ({device.type}), TimeRipple {args.mode} mode: counted q·kᵀ "
                  f"savings {savings:.1%} (mean over ranks) | PSNR vs dense {result['psnr_db']:.2f} dB | "
                  f"wall-clock (measured, VAE included) dense {dense_s:.2f} s, TimeRipple {ripple_s:.2f} s")
            print("saved:", *result["paths"])
        return result
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
