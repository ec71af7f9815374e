"""Shared code of the ``*_t2v.py`` examples: load a pipeline (a real checkpoint, or a tiny random one
with ``--tiny``), generate dense and with TimeRipple from the same seed, save both videos, print the
counted savings, the PSNR between the two videos and the wall-clock times.

The tiny builders use the small configs of diffusers' own tests; they run offline on a CPU in seconds
and are what the test suite runs (``tests/test_diffusers_examples.py``).
"""

from __future__ import annotations

import argparse
import math
import os
import time
from typing import Callable, Dict, Optional

import torch

import timeripple

# -- tiny random pipelines (offline) ----------------------------------------------------------------------


def tiny_wan(two_transformers: bool = False, heads: int = 2, head_dim: int = 12):
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

    def transformer():
        return WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=head_dim, in_channels=16,
            out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
        )

    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    extra = {"transformer_2": transformer(), "boundary_ratio": 0.5} if two_transformers else {}
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer(),
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), **extra)
    inputs = dict(prompt_embeds=torch.randn(1, 16, 32), negative_prompt_embeds=torch.randn(1, 16, 32),
                  height=32, width=48, num_frames=9, guidance_scale=5.0)
    return pipe, inputs


def tiny_hunyuan_video():
    from diffusers import (AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline,
                           HunyuanVideoTransformer3DModel)

    torch.manual_seed(0)
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=1,
        num_single_layers=1, num_refiner_layers=1, patch_size=1, patch_size_t=1, guidance_embeds=True,
        text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4),
    )
    vae = AutoencoderKLHunyuanVideo(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("HunyuanVideoDownBlock3D",) * 4, up_block_types=("HunyuanVideoUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8), layers_per_block=1, act_fn="silu", norm_num_groups=4,
        scaling_factor=0.476986, spatial_compression_ratio=8, temporal_compression_ratio=4, mid_block_add_attention=True,
    )
    pipe = HunyuanVideoPipeline(transformer=transformer, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
                                text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None)
    mask = torch.zeros(1, 16, dtype=torch.long)
    mask[:, :10] = 1  # 10 valid text tokens, 6 padding
    inputs = dict(prompt_embeds=torch.randn(1, 16, 16), pooled_prompt_embeds=torch.randn(1, 8),
                  prompt_attention_mask=mask, height=32, width=48, num_frames=9, guidance_scale=4.5)
    return pipe, inputs


def tiny_cogvideox(rope: bool = False):
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel

    torch.manual_seed(0)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=2 if rope else 4, attention_head_dim=16 if rope else 8, in_channels=4, out_channels=4,
        time_embed_dim=2, text_embed_dim=32, num_layers=1, sample_width=2, sample_height=2, sample_frames=9,
        patch_size=2, temporal_compression_ratio=4, max_text_seq_length=16, use_rotary_positional_embeddings=rope,
    )
    vae = AutoencoderKLCogVideoX(
        in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), latent_channels=4,
        layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4,
    )
    pipe = CogVideoXPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer,
                             scheduler=CogVideoXDDIMScheduler())
    inputs = dict(prompt_embeds=torch.randn(1, 16, 32), negative_prompt_embeds=torch.randn(1, 16, 32),
                  height=32, width=48, num_frames=9, guidance_scale=6.0)
    return pipe, inputs


def tiny_ltx():
    from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXPipeline, LTXVideoTransformer3DModel

    torch.manual_seed(0)
    transformer = LTXVideoTransformer3DModel(
        in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=4, attention_head_dim=8,
        cross_attention_dim=32, num_layers=1, caption_channels=32,
    )
    vae = AutoencoderKLLTXVideo(
        in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1), spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False), decoder_inject_noise=(False,) * 5,
        upsample_residual=(False,) * 4, upsample_factor=(1,) * 4, timestep_conditioning=False, patch_size=1,
        patch_size_t=1, encoder_causal=True, decoder_causal=False,
    )
    vae.use_framewise_encoding = vae.use_framewise_decoding = False
    pipe = LTXPipeline(transformer=transformer, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(),
                       text_encoder=None, tokenizer=None)
    mask = torch.ones(1, 16, dtype=torch.long)
    inputs = dict(prompt_embeds=torch.randn(1, 16, 32), prompt_attention_mask=mask,
                  negative_prompt_embeds=torch.randn(1, 16, 32), negative_prompt_attention_mask=mask,
                  height=32, width=64, num_frames=9, guidance_scale=3.0)
    return pipe, inputs


def tiny_mochi():
    from diffusers import AutoencoderKLMochi, FlowMatchEulerDiscreteScheduler, MochiPipeline, MochiTransformer3DModel

    torch.manual_seed(0)
    transformer = MochiTransformer3DModel(
        patch_size=2, num_attention_heads=2, attention_head_dim=8, num_layers=2, pooled_projection_dim=16,
        in_channels=12, out_channels=None, qk_norm="rms_norm", text_embed_dim=32, time_embed_dim=4,
        activation_fn="swiglu", max_sequence_length=16,
    )
    vae = AutoencoderKLMochi(latent_channels=12, out_channels=3, encoder_block_out_channels=(32, 32, 32, 32),
                             decoder_block_out_channels=(32, 32, 32, 32), layers_per_block=(1, 1, 1, 1, 1))
    pipe = MochiPipeline(transformer=transformer, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(),
                         text_encoder=None, tokenizer=None)
    mask = torch.zeros(1, 16, dtype=torch.long)
    mask[:, :11] = 1
    inputs = dict(prompt_embeds=torch.randn(1, 16, 32), prompt_attention_mask=mask,
                  negative_prompt_embeds=torch.randn(1, 16, 32), negative_prompt_attention_mask=mask.clone(),
                  height=48, width=80, num_frames=7, guidance_scale=4.5)
    return pipe, inputs


TINY: Dict[str, Callable] = {
    "wan": tiny_wan, "wan22": lambda: tiny_wan(two_transformers=True), "hunyuan_video": tiny_hunyuan_video,
    "cogvideox": tiny_cogvideox, "ltx": tiny_ltx, "mochi": tiny_mochi,
}

# a demo config for tiny random models: a short schedule with dense and reusing steps, and thresholds
# large enough that random weights reuse something
TINY_CONFIG = dict(threshold_start=1.0, threshold_end=2.0, ramp_start_step=1, ramp_end_step=2, reference_num_steps=4)


# -- the example flow -------------------------------------------------------------------------------------


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of ``b`` against ``a`` (both in [0, 1])."""
    mse = torch.mean((a.double() - b.double()) ** 2).item()
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def parse_args(description: str, default_model: str, default_config: str, argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", default=default_model, help="Hub id or local path of the checkpoint")
    parser.add_argument("--config", default=default_config, help="bundled TimeRipple config name or YAML path")
    parser.add_argument("--prompt", default="A red fox running through fresh snow at sunrise, cinematic.")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--frames", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", "--out", dest="output", default="outputs", metavar="DIR",
                        help="folder for the two videos (as `timeripple demo --output`; --out is the old name)")
    parser.add_argument("--tiny", action="store_true", help="tiny random model, offline (for tests)")
    return parser.parse_args(argv)


def run(args, family: str, load: Callable[[argparse.Namespace], tuple]) -> dict:
    """Generate dense and TimeRipple videos from the same seed; save, print and return the figures."""
    if args.tiny:
        pipe, inputs = TINY[family]()
        config = timeripple.load_config(args.config).replace(**TINY_CONFIG)
        steps = min(args.steps, 4)
    else:
        pipe, inputs = load(args)
        config, steps = args.config, args.steps
    inputs.update({k: v for k, v in (("height", args.height), ("width", args.width), ("num_frames", args.frames))
                   if v is not None})
    inputs.update(num_inference_steps=steps, output_type="pt")

    def generate():
        start = time.perf_counter()
        frames = pipe(**inputs, generator=torch.Generator("cpu").manual_seed(args.seed)).frames[0]  # (F, C, H, W)
        return frames.float().clamp(0, 1).cpu(), time.perf_counter() - start

    dense, dense_s = generate()
    handle = timeripple.apply_timeripple(pipe, config)
    try:
        ripple, ripple_s = generate()
        stats = handle.stats
    finally:
        timeripple.remove_timeripple(pipe)

    os.makedirs(args.output, exist_ok=True)
    paths = [save_video(video, os.path.join(args.output, f"{family}_{name}")) for name, video in
             (("dense", dense), ("timeripple", ripple))]
    result = {"psnr_db": psnr(dense, ripple), "qk_savings": stats.total_savings, "dense_s": dense_s,
              "timeripple_s": ripple_s, "paths": paths}
    print(stats.summary())
    print(f"counted q·kᵀ savings: {stats.total_savings:.1%} | PSNR vs dense: {result['psnr_db']:.2f} dB | "
          f"wall-clock (measured, this machine, VAE included) dense {dense_s:.2f} s, TimeRipple {ripple_s:.2f} s")
    print("saved:", *paths)
    return result


def save_video(frames: torch.Tensor, stem: str, fps: int = 16) -> str:
    """Save (F, C, H, W) frames in [0, 1] as ``stem.mp4``, or as PNG frames when no video writer exists."""
    from diffusers.utils import export_to_video

    images = [f.permute(1, 2, 0).numpy() for f in frames]
    try:
        return export_to_video(images, stem + ".mp4", fps=fps)
    except (ImportError, AttributeError, RuntimeError, OSError):
        # no video writer: imageio without imageio-ffmpeg raises AttributeError inside diffusers
        from PIL import Image

        os.makedirs(stem, exist_ok=True)
        for i, image in enumerate(images):
            Image.fromarray((image * 255).round().astype("uint8")).save(os.path.join(stem, f"{i:04d}.png"))
        return stem


def load_pipeline(pipeline_cls_name: str, args, dtype: Optional[torch.dtype] = None, **kwargs):
    """``from_pretrained`` on the best device; returns ``(pipe, inputs)``."""
    import diffusers

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = dtype or (torch.bfloat16 if device == "cuda" else torch.float32)
    pipe = getattr(diffusers, pipeline_cls_name).from_pretrained(args.model, torch_dtype=dtype, **kwargs).to(device)
    return pipe, {"prompt": args.prompt}
