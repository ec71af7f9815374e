"""Quality of the token plans at equal pair savings on the shipped tiny model (CPU; issue 10).

Videos of the tiny text-to-video pipeline (20 steps, guidance 5, the bundled ``wan2.1`` schedule) dense
and with token mode at one pair-savings level on the reusing steps, for the plans ``chain`` (keys merge
like queries, today's plan), ``pairs`` (keys merged in disjoint pairs, the bias-free plan) and ``pairs``
with the pair-mean key (``key_repr="mean"``). Fidelity: PSNR of each video against the dense video of
the same prompt and seed (mean over videos). Counted: the pair savings the run recorded.

    python benchmarks/quality_token_plans.py --target 0.75 --seeds 1 2
"""

from __future__ import annotations

import argparse
import json

import torch

PROMPTS = ["a blue square moving left on a black background", "a green triangle moving up on a white background",
           "a yellow circle moving down on a gray background"]


def psnr(a, b):
    mse = torch.mean((a.double() - b.double()) ** 2)
    return float(10 * torch.log10(1.0 / mse)) if mse > 0 else float("inf")


def main():
    import timeripple
    from timeripple import detect, pairs
    from timeripple.demo import load_tiny_pipeline

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, default=0.75)
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    torch.set_num_threads(1)
    pipe = load_tiny_pipeline()
    grid = (9, 16, 16)
    base = timeripple.load_config("wan2.1", mode="channel").replace(mode="token")
    b = detect.budget_for_pair_savings(args.target, grid)
    bq, bk = pairs.pair_budgets_for_pair_savings(args.target, grid)
    methods = {
        "chain": base.replace(budget=b),
        "pairs": base.replace(budget=max(bq, 1e-6), key_budget=bk, token_keys="pairs"),
        "pairs, mean k": base.replace(budget=max(bq, 1e-6), key_budget=bk, token_keys="pairs", key_repr="mean"),
    }
    results = {m: [] for m in methods}
    savings = {}
    for prompt in PROMPTS:
        for seed in args.seeds:
            def gen():
                return pipe(prompt, num_inference_steps=args.steps, guidance_scale=5.0,
                            generator=torch.Generator().manual_seed(seed)).frames
            dense = gen()
            for name, cfg in methods.items():
                timeripple.apply_timeripple(pipe, cfg)
                try:
                    video = gen()
                    stats = timeripple.get_stats(pipe)
                finally:
                    timeripple.remove_timeripple(pipe)
                reusing = [s for s, t in zip(stats.step_savings, stats.thresholds) if t is not None]
                savings.setdefault(name, []).append(sum(reusing) / len(reusing))
                results[name].append(psnr(video, dense))
                print(f"{prompt!r} seed {seed} {name}: {results[name][-1]:.2f} dB, "
                      f"savings on reusing steps {savings[name][-1]:.3f}", flush=True)
    summary = {m: dict(psnr_mean=sum(v) / len(v), psnr_min=min(v), savings=sum(savings[m]) / len(savings[m]),
                       videos=len(v)) for m, v in results.items()}
    print(json.dumps(summary, indent=1))
    if args.json:
        json.dump(dict(summary=summary, per_video=results, args=vars(args)), open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
