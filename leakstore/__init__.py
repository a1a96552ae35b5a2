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

__all__ = [
    "__version__",
    "ConfigMismatchError",
    "ImageDecodeError",
    "InputError",
    "LeakstoreError",
    "StoreError",
    "WeightsNotFoundError",
]
