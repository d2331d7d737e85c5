"""Where models run, in which precision their matrix products pay, and how the CPU allocator keeps their tensors."""

from __future__ import annotations

import ctypes
import os
import sys

import torch

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # blocks up to this size come from the heap: a training step's activations do
TRIM_THRESHOLD = 1 << 30


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


def keep_freed_memory() -> bool:
    """Let the process keep the memory of freed tensors for the next ones, where glibc's malloc would hand it back.

    By default glibc serves every block over a moving threshold (128 KB at first) with its own ``mmap`` and unmaps it
    on free, so a training step's activations can arrive as fresh pages, one page fault per 4 KB: 13-17 million
    faults and 30-40 s of system time in two of three two-epoch trainings here, and steps up to 1.7 times slower in
    one 30-minute run. With blocks up to 32 MB kept on the heap and the heap trimmed only past 1 GB free, the same
    training faults 0.8 million times (RESULTS.md, issue 14, twenty-seventh pass). Call it once, before the work.
    Returns whether it took effect: not off Linux or glibc, and not when the user set the allocator up already
    (``MALLOC_MMAP_THRESHOLD_``, ``GLIBC_TUNABLES``).
    """
    if not sys.platform.startswith("linux") or os.environ.get("MALLOC_MMAP_THRESHOLD_") \
            or "malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # another C library (musl, macOS)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
