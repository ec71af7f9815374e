"""HunyuanVideo text-to-video: dense vs TimeRipple from the same seed.

Loads ``hunyuanvideo-community/HunyuanVideo`` with ``from_pretrained`` (needs the internet once), generates the video dense and
with TimeRipple (config ``hunyuan_video``), saves both, and prints the counted attention savings, the PSNR
of the TimeRipple video against the dense one and both wall-clock times.

    python examples/hunyuan_video_t2v.py --prompt "A cat surfing a wave" --steps 50
    python examples/hunyuan_video_t2v.py --tiny      # tiny random model, offline, seconds on a CPU
"""

import torch

from _common import load_pipeline, parse_args, run


def load(args):
    pipe, inputs = load_pipeline("HunyuanVideoPipeline", args)
    pipe.vae.enable_tiling()
    inputs.update(height=320, width=512, num_frames=61)
    return pipe, inputs


def main(argv=None):
    args = parse_args(__doc__.splitlines()[0], "hunyuanvideo-community/HunyuanVideo", "hunyuan_video", argv)
    return run(args, "hunyuan_video", load)


if __name__ == "__main__":
    main()
