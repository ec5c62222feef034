"""TODO docstring."""

from __future__ import annotations

PRUNED_FILE = "pruned.json"


WEIGHTS_FILE = "weights.pt"


FORMAT = "toolchain.pruned-model"


FORMAT_VERSION = 1
