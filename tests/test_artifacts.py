"""Atomic directory/JSON writing, crash recovery, and manifests."""

import json
import os
import subprocess
import sys
import textwrap
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

import enclip.artifacts as artifacts
from enclip.artifacts import atomic_dir, library_versions, manifest, read_json, recover_dir, write_json
from enclip.errors import EnclipError


def make_old(final: Path) -> None:
    final.mkdir(parents=True)
    (final / "a.txt").write_text("old a")
    (final / "sub").mkdir()
    (final / "sub" / "b.txt").write_text("old b")


def tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def siblings(final: Path) -> list[str]:
    return sorted(p.name for p in final.parent.iterdir() if p.name != final.name)


def dead_pid() -> int:
    """The pid of a process that has already exited (so its leftovers count as stale)."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(child.stdout)


def test_success_replaces_old_contents_entirely(tmp_path):
    final = tmp_path / "run"
    make_old(final)
    with atomic_dir(final) as staging:
        assert staging.parent == final.parent and staging.name.startswith(".run.tmp-")
        (staging / "c.txt").write_text("new c")
        assert tree(final) == {"a.txt": "old a", "sub/b.txt": "old b"}, "final untouched until the block ends"
    assert tree(final) == {"c.txt": "new c"}
    assert siblings(final) == []


def test_creates_missing_parents_and_final(tmp_path):
    final = tmp_path / "deep" / "er" / "run"
    with atomic_dir(final) as staging:
        (staging / "x.json").write_text("{}")
    assert tree(final) == {"x.json": "{}"}


def test_exception_leaves_old_directory_and_no_temp(tmp_path):
    final = tmp_path / "run"
    make_old(final)
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_dir(final) as staging:
            (staging / "a.txt").write_text("half-written")
            raise RuntimeError("boom")
    assert tree(final) == {"a.txt": "old a", "sub/b.txt": "old b"}
    assert siblings(final) == []


def test_exception_on_first_write_leaves_nothing(tmp_path):
    final = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(final) as staging:
            (staging / "a.txt").write_text("x")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


CRASH_MID_SWAP = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    import enclip.artifacts as artifacts

    real_rename, calls = os.rename, []
    def rename_then_die(src, dst):
        calls.append(src)
        if len(calls) == 2:
            os._exit(3)  # the process dies between "final -> backup" and "temp -> final"
        real_rename(src, dst)
    artifacts.os.rename = rename_then_die
    with artifacts.atomic_dir(Path(sys.argv[1])) as staging:
        (staging / "a.txt").write_text("new a")
    """
)


def test_recover_dir_repairs_a_crash_in_the_swap_window(tmp_path):
    final = tmp_path / "run"
    make_old(final)
    crashed = subprocess.run([sys.executable, "-c", CRASH_MID_SWAP, str(final)])
    assert crashed.returncode == 3
    assert not final.exists()
    assert [name.split("-")[0] for name in siblings(final)] == [".run.bak", ".run.tmp"]
    recover_dir(final)
    assert tree(final) == {"a.txt": "old a", "sub/b.txt": "old b"}
    assert siblings(final) == []


def test_recover_dir_drops_stale_leftovers_but_keeps_final_and_live_writers(tmp_path):
    final = tmp_path / "run"
    make_old(final)
    pid = dead_pid()
    for name in (f".run.bak-{pid}-aaaa", f".run.tmp-{pid}-bbbb", f".run.tmp-{os.getpid()}-cccc", ".other.tmp-1-dddd"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "f").write_text("leftover")
    recover_dir(final)
    assert tree(final) == {"a.txt": "old a", "sub/b.txt": "old b"}, "an existing final is never replaced"
    assert siblings(final) == [".other.tmp-1-dddd", f".run.tmp-{os.getpid()}-cccc"]


def test_recover_dir_without_anything_to_do_is_harmless(tmp_path):
    recover_dir(tmp_path / "never-written")
    assert list(tmp_path.iterdir()) == []


def test_write_json_sorted_indented_and_numpy_aware(tmp_path):
    path = tmp_path / "m.json"
    write_json(
        path,
        {
            "b": np.int64(3),
            "a": [np.float32(0.5), np.bool_(True)],
            "arr": np.arange(3),
            "path": Path("/x/y"),
            "nested": {np.int32(2): np.float64(1.5)},
        },
    )
    text = path.read_text()
    assert text.index('"a"') < text.index('"arr"') < text.index('"b"')
    assert '\n  "a": [' in text
    assert read_json(path) == {"a": [0.5, True], "arr": [0, 1, 2], "b": 3, "nested": {"2": 1.5}, "path": "/x/y"}


def test_write_json_failure_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "m.json"
    write_json(path, {"version": 1})

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(artifacts.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_json(path, {"version": 2})
    assert read_json(path) == {"version": 1}
    assert list(tmp_path.iterdir()) == [path]


def test_write_json_unserialisable_value_keeps_old_file(tmp_path):
    path = tmp_path / "m.json"
    write_json(path, {"version": 1})
    with pytest.raises(TypeError):
        write_json(path, {"version": object()})
    assert read_json(path) == {"version": 1}
    assert list(tmp_path.iterdir()) == [path]


def test_read_json_errors_name_the_file(tmp_path):
    with pytest.raises(EnclipError, match="missing.json does not exist"):
        read_json(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text('{"a": ')
    with pytest.raises(EnclipError, match="broken.json is not valid JSON"):
        read_json(tmp_path / "broken.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(EnclipError, match="list.json holds a JSON list"):
        read_json(tmp_path / "list.json")


def test_library_versions_reads_metadata_and_marks_absent(monkeypatch):
    versions = library_versions()
    assert set(versions) == {"python", "enclip", "torch", "open_clip", "timm", "transformers", "faiss", "numpy"}
    assert versions["numpy"] == np.__version__
    assert versions["python"] == ".".join(map(str, sys.version_info[:3]))
    real_version = metadata.version

    def without_timm(name):
        if name == "timm":
            raise metadata.PackageNotFoundError(name)
        return real_version(name)

    monkeypatch.setattr(artifacts.metadata, "version", without_timm)
    assert library_versions()["timm"] == "absent"


def test_manifest_header_and_fields():
    before = datetime.now(timezone.utc).replace(microsecond=0)
    header = manifest("ensemble", members=["a", "b"], data_fingerprint="abc")
    created = datetime.fromisoformat(header["created"])
    assert created.tzinfo is not None and created.utcoffset().total_seconds() == 0
    assert before <= created <= datetime.now(timezone.utc)
    assert header["kind"] == "ensemble" and header["members"] == ["a", "b"] and header["data_fingerprint"] == "abc"
    assert header["versions"] == library_versions()
    json.dumps(header)  # a manifest must be writable as-is
