"""`TinyT2VPipeline`: the embedded text-to-video pipeline, a small twin of diffusers' `WanPipeline`.

It has no VAE (the tiny transformer works on pixels) and a word-level text encoder, but its denoising
loop calls the transformer exactly as `WanPipeline` does (keyword arguments, ``t.expand(B)``,
``cache_context("cond"/"uncond")``, two calls per step under classifier-free guidance), so hooks and
attention processors written for Wan (``apply_timeripple(pipe, "wan2.1")``,
``pipe.transformer.set_attn_processor(...)``) work on it unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from diffusers.video_processor import VideoProcessor

from .._validation import type_error, value_error
from .model import HEIGHT, NUM_FRAMES, WIDTH, with_frame_clock
from .text import TinyTextEncoder, WordTokenizer

logger = logging.getLogger(__name__)

# (num_frames, height, width) combinations the shipped weights were trained for.
SUPPORTED_SIZES: tuple[tuple[int, int, int], ...] = ((NUM_FRAMES, HEIGHT, WIDTH),)
OUTPUT_TYPES = ("pt", "np", "pil", "latent")


@dataclass
class TinyT2VPipelineOutput(BaseOutput):
    """Output of :class:`TinyT2VPipeline`.

    Args:
        frames: ``"pt"``: float tensor ``(B, F, 3, H, W)`` in ``[0, 1]``; ``"np"``: float32 array
            ``(B, F, H, W, 3)`` in ``[0, 1]``; ``"pil"``: a list (batch) of lists of PIL images;
            ``"latent"``: the raw sample ``(B, 3, F, H, W)``, about ``[-1, 1]``.
    """

    frames: Any


class TinyT2VPipeline(DiffusionPipeline):
    """Text-to-video with the embedded tiny Wan model (pixel space, 9 frames of 32x32).

    Args:
        tokenizer (`WordTokenizer`): word-level tokenizer.
        text_encoder (`TinyTextEncoder`): gives ``encoder_hidden_states`` ``(B, 16, text_dim)``.
        transformer (`WanTransformer3DModel`): the denoiser, ``out_channels = 3``; ``in_channels = 4``
            when it takes the frame clock (see :func:`timeripple.demo.model.frame_clock`), else 3.
        scheduler (`FlowMatchEulerDiscreteScheduler`): the flow-matching sampler.

    Load the shipped model with :func:`timeripple.demo.load_tiny_pipeline`.
    """

    model_cpu_offload_seq = "text_encoder->transformer"
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]

    def __init__(
        self,
        tokenizer: WordTokenizer,
        text_encoder: TinyTextEncoder,
        transformer: WanTransformer3DModel,
        scheduler: FlowMatchEulerDiscreteScheduler,
    ):
        super().__init__()
        self.register_modules(
            tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, scheduler=scheduler
        )
        self.video_processor = VideoProcessor(vae_scale_factor=1)
        self._guidance_scale = 1.0
        self._num_timesteps = 0
        self._current_timestep = None
        self._interrupt = False
        self._attention_kwargs = None

    # -- properties as in WanPipeline ------------------------------------------------------------
    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1.0

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def current_timestep(self):
        return self._current_timestep

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    @property
    def attention_kwargs(self):
        return self._attention_kwargs

    # -- steps of the call --------------------------------------------------------------------------
    def encode_prompt(
        self,
        prompt: str | list[str] | None,
        negative_prompt: str | list[str] | None = None,
        do_classifier_free_guidance: bool = True,
        num_videos_per_prompt: int = 1,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        device: torch.device | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encode prompts to ``(B * num_videos_per_prompt, 16, text_dim)`` hidden states.

        An empty prompt, or a ``None`` negative prompt, encodes to the unconditioned embedding.
        """
        device = device or self._execution_device
        if prompt_embeds is None:
            prompt = [prompt] if isinstance(prompt, str) else prompt
            prompt_embeds = self._encode(prompt, device)
        batch = prompt_embeds.shape[0]
        prompt_embeds = prompt_embeds.repeat_interleave(num_videos_per_prompt, dim=0)
        if do_classifier_free_guidance and negative_prompt_embeds is None:
            negative_prompt = negative_prompt or ""
            negative_prompt = batch * [negative_prompt] if isinstance(negative_prompt, str) else negative_prompt
            if len(negative_prompt) != batch:
                raise value_error(
                    "negative_prompt", negative_prompt, f"needs one entry per prompt ({batch})",
                    "pass a str or a list as long as `prompt`",
                )
            negative_prompt_embeds = self._encode(negative_prompt, device)
        if negative_prompt_embeds is not None:
            negative_prompt_embeds = negative_prompt_embeds.repeat_interleave(num_videos_per_prompt, dim=0)
        return prompt_embeds, negative_prompt_embeds

    def _encode(self, prompts: list[str], device) -> torch.Tensor:
        ids = self.tokenizer(prompts).to(device)
        return self.text_encoder(ids)

    def check_inputs(self, prompt, num_frames, height, width, output_type, prompt_embeds, callback_inputs):
        """Raise a clear error for arguments the tiny model cannot serve."""
        if prompt is None and prompt_embeds is None:
            raise value_error("prompt", prompt, "a prompt or `prompt_embeds` is needed", "pass `prompt=...`")
        if prompt is not None and not isinstance(prompt, (str, list)):
            raise type_error("prompt", prompt, "a str or a list of str", "pass text")
        if (num_frames, height, width) not in SUPPORTED_SIZES:
            works = ", ".join(f"num_frames={f}, height={h}, width={w}" for f, h, w in SUPPORTED_SIZES)
            raise value_error(
                "(num_frames, height, width)", (num_frames, height, width),
                f"the tiny model only generates the sizes it was trained on: {works}",
                "leave num_frames, height and width at their defaults",
            )
        if output_type not in OUTPUT_TYPES:
            raise value_error("output_type", output_type, f"must be one of {OUTPUT_TYPES}", 'use "pt"')
        unknown = [k for k in (callback_inputs or []) if k not in self._callback_tensor_inputs]
        if unknown:
            raise value_error(
                "callback_on_step_end_tensor_inputs", unknown, "unknown tensor names",
                f"use some of {self._callback_tensor_inputs}",
            )

    def prepare_latents(self, batch_size, num_frames, height, width, dtype, device, generator, latents=None):
        """Initial noise ``(B, 3, F, H, W)`` in float32 (or ``latents`` moved to ``device``)."""
        if latents is not None:
            return latents.to(device=device, dtype=dtype)
        if isinstance(generator, list) and len(generator) != batch_size:
            raise value_error(
                "generator", generator, f"a list needs one generator per video ({batch_size})",
                "pass one generator, or one per video",
            )
        channels = self.transformer.config.out_channels
        shape = (batch_size, channels, num_frames, height, width)
        return randn_tensor(shape, generator=generator, device=device, dtype=dtype)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        num_frames: int = NUM_FRAMES,
        height: int = HEIGHT,
        width: int = WIDTH,
        num_inference_steps: int = 25,
        guidance_scale: float = 5.0,
        num_videos_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pt",
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: Callable[[Any, int, Any, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
    ):
        """Generate videos.

        Args:
            prompt (`str` or `list[str]`): e.g. ``"a red circle moving right on a gray background"``.
                Unknown words are ignored with a warning; ``""`` generates unconditioned.
            negative_prompt (`str` or `list[str]`, *optional*): the guidance's negative; default
                unconditioned.
            num_frames, height, width (`int`): only ``9, 32, 32`` (see ``SUPPORTED_SIZES``).
            num_inference_steps (`int`, defaults to 25): fewer is faster and rougher.
            guidance_scale (`float`, defaults to 5.0): classifier-free guidance; ``> 1`` runs the
                transformer twice per step (cond, uncond), higher follows the prompt more strictly.
            num_videos_per_prompt (`int`, defaults to 1): videos per prompt.
            generator (`torch.Generator` or a list of them, *optional*): for reproducible noise; a CPU
                generator gives the same noise on every device.
            latents (`torch.Tensor`, *optional*): initial noise ``(B, 3, F, H, W)``.
            prompt_embeds, negative_prompt_embeds (`torch.Tensor`, *optional*): precomputed text
                states ``(B, 16, text_dim)``.
            output_type (`str`, defaults to ``"pt"``): ``"pt"``, ``"np"``, ``"pil"`` or ``"latent"``.
            return_dict (`bool`, defaults to `True`): return :class:`TinyT2VPipelineOutput` or a tuple.
            attention_kwargs (`dict`, *optional*): forwarded to the transformer.
            callback_on_step_end (`Callable`, *optional*): ``f(pipe, i, t, tensors) -> dict`` after each
                step; may replace ``latents`` / embeddings.
            callback_on_step_end_tensor_inputs (`list[str]`): tensors passed to the callback.

        Returns:
            :class:`TinyT2VPipelineOutput` (``.frames``) or ``(frames,)``.

        Example:

        ```py
        >>> import torch
        >>> from timeripple.demo import load_tiny_pipeline
        >>> pipe = load_tiny_pipeline()
        >>> video = pipe("a red circle moving right on a gray background",
        ...              generator=torch.Generator().manual_seed(0)).frames[0]   # (9, 3, 32, 32)
        ```
        """
        callback_on_step_end_tensor_inputs = list(callback_on_step_end_tensor_inputs)
        self.check_inputs(
            prompt, num_frames, height, width, output_type, prompt_embeds, callback_on_step_end_tensor_inputs
        )
        self._guidance_scale = guidance_scale
        self._attention_kwargs = attention_kwargs
        self._current_timestep = None
        self._interrupt = False
        device = self._execution_device

        # 1. Encode the prompts
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt, negative_prompt, self.do_classifier_free_guidance, num_videos_per_prompt,
            prompt_embeds, negative_prompt_embeds, device,
        )
        transformer_dtype = self.transformer.dtype
        prompt_embeds = prompt_embeds.to(transformer_dtype)
        if negative_prompt_embeds is not None:
            negative_prompt_embeds = negative_prompt_embeds.to(transformer_dtype)

        # 2. Timesteps and initial noise
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        latents = self.prepare_latents(
            prompt_embeds.shape[0], num_frames, height, width, torch.float32, device, generator, latents
        )
        self._num_timesteps = len(timesteps)
        self.scheduler.set_begin_index(0)

        # 3. Denoising loop (as in WanPipeline)
        with self.progress_bar(total=num_inference_steps) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                self._current_timestep = t
                latent_model_input = with_frame_clock(latents, self.transformer.config).to(transformer_dtype)
                timestep = t.expand(latents.shape[0])
                cache_context_kwargs = {
                    "step_index": i,
                    "sigma": float(self.scheduler.sigmas[i]),
                    "num_inference_steps": self._num_timesteps,
                }
                with self.transformer.cache_context("cond", **cache_context_kwargs):
                    noise_pred = self.transformer(
                        hidden_states=latent_model_input,
                        timestep=timestep,
                        encoder_hidden_states=prompt_embeds,
                        attention_kwargs=attention_kwargs,
                        return_dict=False,
                    )[0]
                if self.do_classifier_free_guidance:
                    with self.transformer.cache_context("uncond", **cache_context_kwargs):
                        noise_uncond = self.transformer(
                            hidden_states=latent_model_input,
                            timestep=timestep,
                            encoder_hidden_states=negative_prompt_embeds,
                            attention_kwargs=attention_kwargs,
                            return_dict=False,
                        )[0]
                    noise_pred = noise_uncond + guidance_scale * (noise_pred - noise_uncond)

                latents = self.scheduler.step(noise_pred.float(), t, latents, return_dict=False)[0]

                if callback_on_step_end is not None:
                    local = {
                        "latents": latents, "prompt_embeds": prompt_embeds,
                        "negative_prompt_embeds": negative_prompt_embeds,
                    }
                    callback_kwargs = {k: local[k] for k in callback_on_step_end_tensor_inputs}
                    callback_outputs = callback_on_step_end(self, i, t, callback_kwargs) or {}
                    latents = callback_outputs.pop("latents", latents)
                    prompt_embeds = callback_outputs.pop("prompt_embeds", prompt_embeds)
                    negative_prompt_embeds = callback_outputs.pop("negative_prompt_embeds", negative_prompt_embeds)
                progress_bar.update()

        self._current_timestep = None

        # 4. Output: the sample is already RGB in [-1, 1]
        if output_type == "latent":
            video = latents
        else:
            video = self.video_processor.postprocess_video(latents.clamp(-1, 1), output_type=output_type)

        self.maybe_free_model_hooks()
        if not return_dict:
            return (video,)
        return TinyT2VPipelineOutput(frames=video)
