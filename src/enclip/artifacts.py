"""Self-describing, atomically written artefacts: run directories, JSON files and manifests.

Every directory enclip writes (a model, an ensemble, an index, a run) is built in a temporary sibling and swapped
into place, so a crash or Ctrl-C never leaves a half-written artefact where a reader expects a complete one.

The swap in :func:`atomic_dir` is two renames::

    final -> .final.bak-<pid>-<rand>      (old complete copy kept aside)
    .final.tmp-<pid>-<rand> -> final      (new complete copy in place)

Between the two renames (a few microseconds) ``final`` does not exist, but the old complete copy does, under the
backup name. A crash in exactly that window is repaired by :func:`recover_dir`, which renames the backup back to
``final``; the new copy is lost, never half-applied. One writer per directory is assumed.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
import platform
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import numpy as np

from enclip.errors import EnclipError

logger = logging.getLogger(__name__)

# Distribution names to look up for each library recorded in a manifest (first one installed wins).
_DISTRIBUTIONS: dict[str, tuple[str, ...]] = {
    "enclip": ("enclip",),
    "torch": ("torch",),
    "open_clip": ("open_clip_torch", "open-clip-torch"),
    "timm": ("timm",),
    "transformers": ("transformers",),
    "faiss": ("faiss-cpu", "faiss-gpu", "faiss"),
    "numpy": ("numpy",),
}


def _sibling_name(final: Path, tag: str) -> Path:
    return final.parent / f".{final.name}.{tag}-{os.getpid()}-{secrets.token_hex(4)}"


def fsync_path(path: Path) -> None:
    """fsync one file or directory; directories cannot be opened for fsync on every platform, so that is best effort."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for directory, _, files in os.walk(root):
        for name in files:
            fsync_path(Path(directory) / name)
        fsync_path(Path(directory))


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling directory to fill; on success it replaces ``final`` whole, on error it vanishes.

    Readers of ``final`` see either the old complete directory or the new complete one, never a mix (see the module
    docstring for the one tiny window and how :func:`recover_dir` closes it).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    temp = _sibling_name(final, "tmp")
    temp.mkdir()
    try:
        yield temp
        _fsync_tree(temp)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    _swap_into_place(temp, final)


def _swap_into_place(temp: Path, final: Path) -> None:
    backup = None
    if final.exists():
        backup = _sibling_name(final, "bak")
        os.rename(final, backup)
    os.rename(temp, final)
    fsync_path(final.parent)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def _owner_pid(path: Path) -> int | None:
    """The writer's pid encoded in a temp/backup name (``.name.tmp-<pid>-<rand>``), or None if not parseable."""
    try:
        return int(path.name.rsplit("-", 2)[-2])
    except (IndexError, ValueError):
        return None


def _pid_alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale_siblings(final: Path, tag: str) -> list[Path]:
    """Temp/backup siblings of ``final`` whose writing process is gone (live writers are left alone)."""
    if not final.parent.is_dir():
        return []
    found = final.parent.glob(f".{glob.escape(final.name)}.{tag}-*")
    return [p for p in found if p.is_dir() and not _pid_alive(_owner_pid(p))]


def recover_dir(final: Path) -> None:
    """Repair ``final`` after a crash: restore the old copy if the crash hit mid-swap, drop leftover temp/backup dirs.

    Only leftovers of processes that no longer run are touched, so calling this while another process is writing
    the same directory does not break it.
    """
    final = Path(final)
    backups = sorted(_stale_siblings(final, "bak"), key=lambda p: p.stat().st_ctime)
    if not final.exists() and backups:
        restored = backups.pop()
        os.rename(restored, final)
        fsync_path(final.parent)
        logger.warning("restored %s from backup %s left by an interrupted write", final, restored.name)
    for leftover in backups + _stale_siblings(final, "tmp"):
        logger.info("removing stale %s", leftover)
        shutil.rmtree(leftover, ignore_errors=True)


def _to_builtin(obj: Any) -> Any:
    """Recursively turn numpy scalars/arrays, paths, dataclasses and sets into plain JSON-able Python values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _to_builtin(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {_to_builtin_key(k): _to_builtin(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_builtin(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted(_to_builtin(v) for v in obj)
    if isinstance(obj, np.ndarray):
        return _to_builtin(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _to_builtin_key(key: Any) -> Any:
    key = _to_builtin(key)
    return key if isinstance(key, (str, int, float, bool)) or key is None else str(key)


@contextmanager
def atomic_file(path: Path, mode: str = "wb") -> Iterator[IO]:
    """Yield a handle on a temporary sibling of ``path``; on success it is fsync'd and renamed over ``path`` (and the
    directory fsync'd), on error it vanishes. Readers see the old complete file or the new complete one.

    The one write pattern for every file enclip replaces: JSON manifests, shards, heads, reports.
    """
    path = Path(path)
    temp = _sibling_name(path, "tmp")
    try:
        with open(temp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON (sorted keys, indent 2) so the file is either the old one or the complete new one."""
    text = json.dumps(_to_builtin(obj), sort_keys=True, indent=2) + "\n"
    with atomic_file(path, "w") as handle:
        handle.write(text)


def read_json(path: Path) -> dict:
    """Read a JSON object written by :func:`write_json`, failing with a message naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EnclipError(f"{path} does not exist; check the path or rebuild the artefact holding it") from None
    except OSError as error:
        raise EnclipError(f"cannot read {path}: {error}") from error
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise EnclipError(f"{path} is not valid JSON ({error}); the artefact is corrupt, rebuild it") from error
    if not isinstance(value, dict):
        raise EnclipError(f"{path} holds a JSON {type(value).__name__}, expected an object; rebuild the artefact")
    return value


def _distribution_version(names: tuple[str, ...]) -> str:
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "absent"


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape an artefact, read from package metadata (nothing heavy is imported)."""
    versions = {"python": platform.python_version()}
    versions.update({lib: _distribution_version(names) for lib, names in _DISTRIBUTIONS.items()})
    return versions


def manifest(kind: str, **fields: Any) -> dict:
    """The header every saved artefact carries: what it is, when it was made, and with which library versions."""
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return {"kind": kind, "created": created, "versions": library_versions(), **fields}
