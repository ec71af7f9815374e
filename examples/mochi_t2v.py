"""Mochi text-to-video (no tuned config ships for Mochi: expect a warning, or calibrate): dense vs TimeRipple from the same seed.

Loads ``genmo/mochi-1-preview`` with ``from_pretrained`` (needs the internet once), generates the video dense and
with TimeRipple (config ``hunyuan_video``), saves both, and prints the counted attention savings, the PSNR
of the TimeRipple video against the dense one and both wall-clock times.

    python examples/mochi_t2v.py --prompt "A cat surfing a wave" --steps 50
    python examples/mochi_t2v.py --tiny      # tiny random model, offline, seconds on a CPU
"""

import torch

from _common import load_pipeline, parse_args, run


def load(args):
    pipe, inputs = load_pipeline("MochiPipeline", args)
    pipe.enable_vae_tiling()
    inputs.update(height=480, width=848, num_frames=85, guidance_scale=4.5)
    return pipe, inputs


def main(argv=None):
    args = parse_args(__doc__.splitlines()[0], "genmo/mochi-1-preview", "hunyuan_video", argv)
    return run(args, "mochi", load)


if __name__ == "__main__":
    main()
