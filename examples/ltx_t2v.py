"""LTX-Video text-to-video (no tuned config ships for LTX: expect a warning, or calibrate): dense vs TimeRipple from the same seed.

Loads ``Lightricks/LTX-Video`` with ``from_pretrained`` (needs the internet once), generates the video dense and
with TimeRipple (config ``hunyuan_video``), saves both, and prints the counted attention savings, the PSNR
of the TimeRipple video against the dense one and both wall-clock times.

    python examples/ltx_t2v.py --prompt "A cat surfing a wave" --steps 50
    python examples/ltx_t2v.py --tiny      # tiny random model, offline, seconds on a CPU
"""

import torch

from _common import load_pipeline, parse_args, run


def load(args):
    pipe, inputs = load_pipeline("LTXPipeline", args)
    inputs.update(height=480, width=704, num_frames=161, guidance_scale=3.0)
    return pipe, inputs


def main(argv=None):
    args = parse_args(__doc__.splitlines()[0], "Lightricks/LTX-Video", "hunyuan_video", argv)
    return run(args, "ltx", load)


if __name__ == "__main__":
    main()
