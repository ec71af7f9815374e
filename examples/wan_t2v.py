"""Wan 2.1 text-to-video: dense vs TimeRipple from the same seed.

Loads ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers`` with ``from_pretrained`` (needs the internet once), generates the video dense and
with TimeRipple (config ``wan2.1``), saves both, and prints the counted attention savings, the PSNR
of the TimeRipple video against the dense one and both wall-clock times.

    python examples/wan_t2v.py --prompt "A cat surfing a wave" --steps 50
    python examples/wan_t2v.py --tiny      # tiny random model, offline, seconds on a CPU
"""

import torch

from _common import load_pipeline, parse_args, run


def load(args):
    import diffusers

    vae = diffusers.AutoencoderKLWan.from_pretrained(args.model, subfolder="vae", torch_dtype=torch.float32)
    pipe, inputs = load_pipeline("WanPipeline", args, vae=vae)
    inputs.update(height=480, width=832, num_frames=81, guidance_scale=5.0)
    return pipe, inputs


def main(argv=None):
    args = parse_args(__doc__.splitlines()[0], "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "wan2.1", argv)
    return run(args, "wan", load)


if __name__ == "__main__":
    main()
