"""``timeripple eval`` methods of the token-plan fidelity options (issue 9; ``timeripple.token_fidelity``).

Every method's knob is the ``pair_savings`` target itself (budgets computed per call from the grid), so
the harness's search usually needs one evaluation per level; ``budget_scope="call"`` variants reach a
little less than their target (heads that reuse more on one side tend to reuse more on the other), which
the search corrects.
"""

from __future__ import annotations

from .methods import Method, MethodSetup, register_method

# the fidelity default: group-mean keys picked by the merge-error score, interpolated query rows,
# a key-heavy split of the savings
FIDELITY = dict(mode="token", key_repr="mean", key_score="kv", query_repr="interp", token_keys="chain",
                key_share=0.7, token_criterion="rms", budget=None, key_budget=None, channel_alpha=None)

VARIANTS = {
    "token-fidelity": ("token mode, fidelity plan: mean keys by the kv score, interpolated queries, key share 0.7",
                       {}),
    "token-fidelity-pooled": ("token-fidelity with the budget pooled over the heads of each call",
                              {"budget_scope": "call"}),
    "token-fidelity-pairs": ("token-fidelity with keys merged in disjoint pairs only (bias-free attention)",
                             {"token_keys": "pairs", "key_share": 0.6}),
    "token-fidelity-auto": ("token-fidelity pooled over the heads of each call with the measured split "
                            "(key_share='auto': keys only up to 50%; the bundled default)",
                            {"budget_scope": "call", "key_share": "auto"}),
    "token-fidelity-auto-head": ("token-fidelity with the measured split (key_share='auto') and the same "
                                 "budget in every head (static shapes)", {"key_share": "auto"}),
    "token-meanq-pooled": ("token-fidelity-pooled with the output computed at the group's mean query",
                           {"budget_scope": "call", "query_repr": "mean"}),
}


def _build(changes):
    def build(target, config):
        cfg = config.replace(**{**FIDELITY, **changes}, pair_savings=float(target),
                             name=f"{config.name or 'custom'}-fidelity{target:.4g}")
        return MethodSetup(cfg)
    return build


for _name, (_description, _changes) in VARIANTS.items():
    register_method(Method(_name, _description, knob="pair savings target", savings="q·k pairs",
                           build=_build(_changes), bounds=(0.0, 0.99), log_knob=False,
                           first_guess=lambda target, geo: target), replace=True)
