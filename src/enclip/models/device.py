"""Where models run, and in which precision their matrix products pay."""

from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    """``"auto"`` picks CUDA when present, else the CPU; any other name is passed to torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cpu_has_bfloat16_tiles() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (Intel AMX, Sapphire Rapids and later). Without it,
    PyTorch emulates bfloat16 on the CPU and it is slower than float32."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe()) if probe is not None else False
