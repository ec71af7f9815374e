"""Token-plan fidelity on the tiny model's videos (CPU): PSNR / SSIM vs dense for the old token plan and the
fidelity variants at equal pair savings on the reusing steps (issue 9). One JSON line per video and method.

    python benchmarks/experiments/fidelity_videos.py --levels 0.75 0.5 --runs 2 > fidelity_videos.jsonl

Methods: ``token-budget`` (today's plan: first-member keys, copied queries, the same budget on both sides,
from ``detect.budget_for_pair_savings``) and the ``timeripple.eval.fidelity_methods`` variants, whose
``pair_savings`` target is met per call (the pooled variants reach a little less; the line says what).
"""

from __future__ import annotations

import argparse
import json
import sys

import torch


def main():
    import timeripple
    from timeripple import detect
    from timeripple.demo import load_tiny_pipeline
    from timeripple.eval import EVAL_PROMPTS, psnr, score_adherence, ssim
    from timeripple.eval.fidelity_methods import FIDELITY, VARIANTS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", nargs="+", type=float, default=[0.75, 0.5])
    parser.add_argument("--runs", type=int, default=2, help="(prompt, seed 0) runs from EVAL_PROMPTS")
    parser.add_argument("--methods", nargs="+", default=["token-fidelity", "token-budget", "token-fidelity-pooled"])
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    pipe = load_tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    base = timeripple.load_config("wan2.1", mode="channel")
    grid = (9, 16, 16)
    for prompt in EVAL_PROMPTS[: args.runs]:
        def generate():
            return pipe(prompt, num_inference_steps=args.steps, guidance_scale=5.0,
                        generator=torch.Generator().manual_seed(0)).frames[0]

        dense = generate()
        for level in args.levels:
            for method in args.methods:
                if method == "token-budget":
                    cfg = base.replace(mode="token", budget=detect.budget_for_pair_savings(level, grid))
                else:
                    cfg = base.replace(**{**FIDELITY, **VARIANTS[method][1]}, pair_savings=level)
                timeripple.apply_timeripple(pipe, cfg)
                try:
                    video = generate()
                    stats = timeripple.get_stats(pipe)
                finally:
                    timeripple.remove_timeripple(pipe)
                reusing = [s for s, t in zip(stats.step_savings, stats.thresholds) if t is not None]
                row = dict(prompt=prompt, seed=0, level=level, method=method, psnr=psnr(dense, video),
                           ssim=ssim(dense, video), savings_reusing=sum(reusing) / len(reusing),
                           adherence_dense=score_adherence(dense, prompt), adherence=score_adherence(video, prompt))
                print(json.dumps(row, default=str), flush=True)


if __name__ == "__main__":
    sys.exit(main())
