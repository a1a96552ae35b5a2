"""`leakstore env`: what a bug report needs."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import sys


def _version(name: str) -> str:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "not installed"


def xformers_status() -> tuple[bool, str]:
    """(usable, reason). Usable only with CUDA and a successful tiny test call."""
    try:
        import torch

        if not torch.cuda.is_available():
            return False, "no CUDA device: using torch scaled_dot_product_attention"
        import xformers.ops as xops

        q = torch.randn(1, 8, 2, 16, device="cuda", dtype=torch.float16)
        xops.memory_efficient_attention(q, q, q)
        return True, f"xformers {_version('xformers')} memory-efficient attention works"
    except ImportError:
        return False, "xformers not installed (pip install 'leakstore[gpu]'): using scaled_dot_product_attention"
    except Exception as e:  # kernels built for another torch/CUDA
        return (
            False,
            f"xformers present but unusable ({type(e).__name__}: {str(e)[:80]}): using scaled_dot_product_attention",
        )


def collect() -> dict:
    import torch

    info = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "packages": {
            n: _version(n)
            for n in (
                "leakstore",
                "torch",
                "diffusers",
                "zarr",
                "numcodecs",
                "dask",
                "distributed",
                "scikit-learn",
                "typer",
                "numpy",
                "pillow",
                "safetensors",
                "huggingface_hub",
                "xformers",
            )
        },
        "cuda_available": torch.cuda.is_available(),
        "torch_cuda": torch.version.cuda,
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "torch_threads": torch.get_num_threads(),
        "hf_hub_offline": os.environ.get("HF_HUB_OFFLINE", ""),
        "leakstore_weights": os.environ.get("LEAKSTORE_WEIGHTS", ""),
    }
    ok, why = xformers_status()
    info["xformers"] = {"usable": ok, "detail": why}
    return info
