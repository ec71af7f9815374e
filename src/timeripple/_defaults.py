"""Defaults of the ``timeripple`` command, in a module that imports nothing heavy: ``timeripple --help``
builds its parser from them without importing torch."""

from .options import MODES  # noqa: F401  (re-exported for the CLI; options imports no torch)

DEFAULT_PROMPT = "a red circle moving right quickly on a gray background"
DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 5.0
DEFAULT_CONFIG = "wan2.1"
VIDEO_FORMATS = ("auto", "mp4", "gif")
DEFAULT_SCALES = (0.1, 0.25, 0.5, 1.0)  # calibrate: multipliers on the config's thresholds
