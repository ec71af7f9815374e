"""Defaults of the ``timeripple`` command, kept free of torch imports so that ``timeripple ... --help``
stays fast; the modules that use them (``demo.run_demo``, ``calibrate``) re-export them."""

DEFAULT_PROMPT = "a red circle moving right quickly on a gray background"
DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 5.0
DEFAULT_CONFIG = "wan2.1"
MODES = ("channel", "token")
VIDEO_FORMATS = ("auto", "mp4", "gif")
DEFAULT_SCALES = (0.1, 0.25, 0.5, 1.0)  # calibrate: multipliers on the config's thresholds
