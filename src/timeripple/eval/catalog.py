"""Every method of ``timeripple eval``: importing this module registers them all.

``methods.py`` defines the registry and the built-ins (channel, token variants, the Fig. 7 baselines); the
modules below add to it with ``register_method`` and import ``methods``, never the other way round, so there
is no import cycle. ``timeripple.eval`` and the harness import this module before they look a method up.
"""

from . import methods  # noqa: F401  (the registry and the built-ins)
from . import fidelity_methods  # noqa: F401  (token-plan fidelity variants, issue 9)
from . import ablation_methods, peer_methods  # noqa: F401  (the paper's ablations and the peers, issue 13)
