"""leakstore: attribute AI-generated images to their generator from diffusion signal leaks."""
from __future__ import annotations

__version__ = "0.1.0"

from leakstore.errors import (  # noqa: E402
    ConfigMismatchError,
    ImageDecodeError,
    InputError,
    LeakstoreError,
    StoreError,
    WeightsNotFoundError,
)



def __getattr__(name):  # lazy: importing leakstore stays cheap (no torch) until Attributor is used
    if name == "Attributor":
        from leakstore.attributor import Attributor
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
