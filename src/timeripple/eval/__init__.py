"""Evaluation: fidelity metrics (PSNR, SSIM), the prompt-adherence score of the embedded tiny model, and
``timeripple eval``, the harness that compares attention methods at matched savings.

Names are imported lazily, so ``import timeripple.eval`` (and ``timeripple eval --help``) stays cheap::

    from timeripple.eval import evaluate, register_method, Method, MethodSetup
    result = evaluate(pipe, methods=["channel", "token-budget"], levels=(0.5, 0.75))
    result.save("eval_out")   # results.json, results.md, plots
"""

from importlib import import_module

# public name -> submodule that defines it
_EXPORTS = {
    "ADHERENCE_PROMPTS": "adherence",
    "evaluate_adherence": "adherence",
    "score_adherence": "adherence",
    "psnr": "metrics",
    "ssim": "metrics",
    "EVAL_PROMPTS": "prompts",
    "EVAL_SEEDS": "prompts",
    "DEFAULT_LEVELS": "prompts",
    "Method": "methods",
    "MethodSetup": "methods",
    "Geometry": "methods",
    "register_method": "methods",
    "get_method": "methods",
    "list_methods": "methods",
    "match_savings": "search",
    "SearchResult": "search",
    "capture_attention": "capture",
    "CapturedCall": "capture",
    "attention_error": "capture",
    "evaluate": "harness",
    "EvalResult": "report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'timeripple.eval' has no attribute {name!r}")


def __dir__():
    return __all__
