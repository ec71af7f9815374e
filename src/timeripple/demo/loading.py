"""Saving and loading the tiny demo model's weights (one safetensors file plus JSON configs)."""

from __future__ import annotations

import json
import logging
from importlib import resources
from pathlib import Path

import torch

from .._validation import value_error

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
TRANSFORMER_CONFIG = "transformer_config.json"
TEXT_ENCODER_CONFIG = "text_encoder_config.json"
SCHEDULER_CONFIG = "scheduler_config.json"
REQUIRED_FILES = (WEIGHTS_FILE, TRANSFORMER_CONFIG, TEXT_ENCODER_CONFIG, SCHEDULER_CONFIG)

_FIX = (
    "reinstall the package (`pip install --force-reinstall timeripple`), or retrain the model with "
    "`python tools/train_tiny_t2v.py --out runs/tiny --export DIR` and pass `weights_dir=DIR`"
)


def shipped_weights_dir() -> Path:
    """The folder of the weights shipped inside the package (``timeripple/demo/weights``)."""
    return Path(str(resources.files("timeripple.demo").joinpath("weights")))


def save_tiny_weights(directory, transformer, text_encoder, scheduler, dtype: torch.dtype = torch.float16) -> Path:
    """Write the transformer and text encoder weights (``transformer.*``, ``text_encoder.*`` keys) to
    ``model.safetensors`` in ``dtype``, and the three configs as JSON. Returns the folder."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for prefix, module in (("transformer", transformer), ("text_encoder", text_encoder)):
        for name, value in module.state_dict().items():
            tensors[f"{prefix}.{name}"] = value.detach().to("cpu", dtype).contiguous()
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
    transformer.to_json_file(str(directory / TRANSFORMER_CONFIG))
    text_encoder.to_json_file(str(directory / TEXT_ENCODER_CONFIG))
    scheduler.to_json_file(str(directory / SCHEDULER_CONFIG))
    return directory


def load_tiny_components(weights_dir=None, device="cpu", dtype: torch.dtype = torch.float32) -> dict:
    """Build ``tokenizer``, ``text_encoder``, ``transformer`` and ``scheduler`` from a weights folder.

    Args:
        weights_dir (`str` or `Path`, *optional*): defaults to :func:`shipped_weights_dir`.
        device, dtype: where and in which precision the models live.

    Raises:
        FileNotFoundError: a file is missing. ValueError: a file is corrupt or does not match.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, WanTransformer3DModel
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .text import TinyTextEncoder

    directory = Path(weights_dir) if weights_dir is not None else shipped_weights_dir()
    missing = [name for name in REQUIRED_FILES if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"The tiny demo model's files {missing} are missing from {str(directory)!r}. Fix: {_FIX}."
        )
    try:
        configs = {n: json.loads((directory / n).read_text()) for n in REQUIRED_FILES[1:]}
        transformer = WanTransformer3DModel.from_config(configs[TRANSFORMER_CONFIG])
        text_encoder = TinyTextEncoder.from_config(configs[TEXT_ENCODER_CONFIG])
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(configs[SCHEDULER_CONFIG])
        state = load_file(str(directory / WEIGHTS_FILE))
        for prefix, module in (("transformer", transformer), ("text_encoder", text_encoder)):
            part = {k[len(prefix) + 1 :]: v for k, v in state.items() if k.startswith(prefix + ".")}
            module.load_state_dict(part, strict=True)
    except (SafetensorError, json.JSONDecodeError, RuntimeError, KeyError, TypeError, ValueError, OSError) as err:
        raise value_error(
            "weights_dir", str(directory), f"the tiny demo model's files are corrupt or do not match ({err})", _FIX
        ) from err
    for module in (transformer, text_encoder):
        module.to(device).eval()
        if dtype != torch.float32:
            module.to(dtype)
    logger.debug("Loaded the tiny demo model from %s", directory)
    return {
        "tokenizer": text_encoder.tokenizer(),
        "text_encoder": text_encoder,
        "transformer": transformer,
        "scheduler": scheduler,
    }
