"""CogVideoX text-to-video: dense vs TimeRipple from the same seed.

Loads ``THUDM/CogVideoX-5b`` with ``from_pretrained`` (needs the internet once), generates the video dense and
with TimeRipple (config ``cogvideox``), saves both, and prints the counted attention savings, the PSNR
of the TimeRipple video against the dense one and both wall-clock times.

    python examples/cogvideox_t2v.py --prompt "A cat surfing a wave" --steps 50
    python examples/cogvideox_t2v.py --tiny      # tiny random model, offline, seconds on a CPU
"""

import torch

from _common import load_pipeline, parse_args, run


def load(args):
    pipe, inputs = load_pipeline("CogVideoXPipeline", args)
    pipe.vae.enable_tiling()
    inputs.update(height=480, width=720, num_frames=49, guidance_scale=6.0)
    return pipe, inputs


def main(argv=None):
    args = parse_args(__doc__.splitlines()[0], "THUDM/CogVideoX-5b", "cogvideox", argv)
    return run(args, "cogvideox", load)


if __name__ == "__main__":
    main()
