"""Which torch device a stage runs on (shared by featurize, training and scoring)."""
from __future__ import annotations

from leakstore.errors import LeakstoreError


def resolve_device(device: str = "auto"):
    """'auto', 'cpu', 'cuda', 'cuda:N' -> torch.device; a clear error when CUDA is asked for and absent."""
    import torch
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    d = torch.device(device)
    if d.type == "cuda" and not torch.cuda.is_available():
        raise LeakstoreError(f"--device {device}: no CUDA device is visible here; use --device cpu")
    return d
