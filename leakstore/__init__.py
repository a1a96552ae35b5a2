"""leakstore: attribute AI-generated images to their generator from diffusion signal leaks."""

from __future__ import annotations

import os as _os

# OpenMP threads that wait for work sleep instead of spinning: spinning threads fight any other busy
# process for the cores, and training beside one slowed by a factor of twenty (docs/speed.md). OpenMP
# reads this when torch loads, so it takes effect when leakstore is imported first (the command line
# always is); a value the user set wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from leakstore.errors import (  # noqa: E402
    ConfigMismatchError,
    ImageDecodeError,
    InputError,
    LeakstoreError,
    StoreError,
    WeightsNotFoundError,
)
from leakstore.version import __version__  # noqa: E402


def __getattr__(name):  # lazy: importing leakstore stays cheap (no torch) until Attributor is used
    if name == "Attributor":
        from leakstore.api.attributor import Attributor

        return Attributor
    raise AttributeError(name)


__all__ = [
    "__version__",
    "Attributor",
    "ConfigMismatchError",
    "ImageDecodeError",
    "InputError",
    "LeakstoreError",
    "StoreError",
    "WeightsNotFoundError",
]
