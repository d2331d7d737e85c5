"""Process set-up for CPU training: the allocator keeps freed tensor memory."""

from __future__ import annotations

import ctypes.util
import sys

import pytest

from enclip.models import device


@pytest.mark.skipif(not sys.platform.startswith("linux") or "libc.so" not in str(ctypes.util.find_library("c")),
                    reason="glibc's mallopt only")
def test_glibc_takes_both_allocator_settings(monkeypatch):
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    assert device.keep_freed_memory()  # mallopt returns 0 for a parameter or value it refuses


@pytest.mark.parametrize("variable,value", [("MALLOC_MMAP_THRESHOLD_", "1048576"),
                                            ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0")])
def test_an_allocator_the_user_set_up_is_left_alone(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    calls = []
    monkeypatch.setattr(device.ctypes, "CDLL", lambda name: calls.append(name))
    assert not device.keep_freed_memory() and calls == []
