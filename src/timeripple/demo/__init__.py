"""The embedded tiny text-to-video demo: procedural clips, a word-level text encoder, a small pixel-space
`WanTransformer3DModel`, :class:`TinyT2VPipeline` and the weights shipped with the package.

Example:

```py
>>> import torch
>>> from timeripple.demo import load_tiny_pipeline
>>> pipe = load_tiny_pipeline()                       # CPU, float32, offline
>>> out = pipe("a red circle moving right on a gray background", num_inference_steps=25,
...            generator=torch.Generator().manual_seed(0))
>>> out.frames.shape                                  # (B, F, 3, H, W) in [0, 1]
torch.Size([1, 9, 3, 32, 32])
```
"""

from __future__ import annotations

import torch

from .loading import load_tiny_components, save_tiny_weights, shipped_weights_dir

__all__ = ["load_tiny_pipeline", "load_tiny_components", "save_tiny_weights", "shipped_weights_dir", "TinyT2VPipeline"]


def load_tiny_pipeline(device="cpu", dtype: torch.dtype = torch.float32, weights_dir=None):
    """Load the shipped tiny text-to-video pipeline in one call (offline, a few MB).

    Args:
        device (`str` or `torch.device`, defaults to ``"cpu"``): where the models run.
        dtype (`torch.dtype`, defaults to `torch.float32`): model precision (bf16/fp16 on a GPU).
        weights_dir (`str` or `Path`, *optional*): load another export of
            ``tools/train_tiny_t2v.py`` instead of the shipped weights.

    Returns:
        :class:`TinyT2VPipeline`

    Raises:
        FileNotFoundError / ValueError: the weights are missing / corrupt; the message says how to
        reinstall or retrain.
    """
    from .pipeline import TinyT2VPipeline

    components = load_tiny_components(weights_dir, device=device, dtype=dtype)
    pipe = TinyT2VPipeline(**components)
    return pipe


def __getattr__(name):
    if name == "TinyT2VPipeline":
        from .pipeline import TinyT2VPipeline

        return TinyT2VPipeline
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
