"""TimeRipple for diffusers video pipelines: processors per model family, a step/grid hook,
``apply_timeripple`` / ``remove_timeripple`` and generation statistics.

```py
import timeripple
handle = timeripple.apply_timeripple(pipe, "wan2.1")
video = pipe(prompt, num_inference_steps=50).frames[0]
print(timeripple.get_stats(pipe))
timeripple.remove_timeripple(pipe)
```
"""

from .apply import TimeRippleHandle, apply_timeripple, get_stats, processors_for_model, remove_timeripple
from .context_parallel import enable_context_parallel
from .family import FamilySpec
from .generation_stats import GenerationStats
from .hook import HOOK_NAME, TimeRippleHook
from .processors import TimeRippleAttnProcessor
from .registry import register_family, register_model, supported_models

__all__ = [
    "apply_timeripple",
    "remove_timeripple",
    "get_stats",
    "processors_for_model",
    "enable_context_parallel",
    "TimeRippleAttnProcessor",
    "TimeRippleHandle",
    "GenerationStats",
    "TimeRippleHook",
    "HOOK_NAME",
    "FamilySpec",
    "register_family",
    "register_model",
    "supported_models",
]
