"""The default evaluation set of ``timeripple eval`` (kept free of torch imports, for the CLI's help).

Eight captions of the tiny model's grammar that are in none of the project's fixed prompt lists
(:data:`timeripple.eval.ADHERENCE_PROMPTS`, the quality regression tests, the demo's default), so a method
tuned on those lists is not scored on its own training material. Together they use every colour, every
shape, every direction twice, both speeds and all background styles. Never change them: figures are
compared across versions.
"""

EVAL_PROMPTS: tuple[str, ...] = (
    "a green circle moving right slowly on a black background",
    "a magenta triangle moving down quickly on a teal background",
    "a white square moving up slowly on a purple gradient background",
    "a cyan circle moving left quickly on a maroon background",
    "a yellow square moving down slowly on an olive background",
    "a red triangle moving left quickly on a gray textured background",
    "a blue circle moving up quickly on a navy gradient background",
    "a magenta square moving right slowly on a black textured background",
)
EVAL_SEEDS: tuple[int, ...] = (0, 1)
DEFAULT_LEVELS: tuple[float, ...] = (0.5, 0.75, 0.875)
DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 5.0
DEFAULT_CONFIG = "wan2.1"
SAVINGS_TOLERANCE = 0.005  # |achieved - target| on the reusing steps, absolute
DEFAULT_METHODS: tuple[str, ...] = ("channel", "token-strict", "token-budget", "token-rms", "magnitude", "skip")

__all__ = ["EVAL_PROMPTS", "EVAL_SEEDS", "DEFAULT_LEVELS", "DEFAULT_STEPS", "DEFAULT_GUIDANCE", "DEFAULT_CONFIG",
           "SAVINGS_TOLERANCE", "DEFAULT_METHODS"]
