"""Kill a process at a random point of an index rebuild or of an admin change, then look at what survived.

A child process counts every fsync and rename it makes and dies (``os._exit``) at the N-th one, drawn by hypothesis;
no cleanup runs, as after kill -9 or a power cut at that instant. Then a fresh reader must find a complete index,
the old one or the new one, never a mix, and every admin change the child saw acknowledged must be there.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enclip import load_searcher
from tests.strategies import SLOW

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # every case starts a Python process that imports torch: the slow set
KILLER = """
import os, sys
calls = {"n": 0}
KILL_AT = int(sys.argv[1])

def counted(fn):
    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == KILL_AT:
            os._exit(9)
        return fn(*args, **kwargs)
    return wrapper

os.fsync, os.rename, os.replace = counted(os.fsync), counted(os.rename), counted(os.replace)
"""
REBUILD = KILLER + """
sys.path.insert(0, ".")
from tests.conftest import synthetic_catalogue
from enclip.indexing import build_index
build_index(sys.argv[2], synthetic_catalogue(90, seed=3), sys.argv[3])
print("finished", calls["n"])
"""
ADMIN = KILLER + """
import json
sys.path.insert(0, ".")
from fastapi.testclient import TestClient
from enclip.serve.app import ServeCfg, create_app
from tests.serve.fake_searcher import FakeSearcher, colour_image

token = "k" * 32
app = create_app(FakeSearcher(n=4), ServeCfg(admin_token=token, changelog_path=sys.argv[2]))
with TestClient(app) as client:
    for n in range(6):
        item = {"id": f"new-{n}", "title": f"Item {n}", "attributes": {"gender": "Women"}}
        response = client.post("/admin/items", data={"item": json.dumps(item)},
                               headers={"Authorization": "Bearer " + token},
                               files={"image": ("a.png", colour_image((10 * n, 40, 90)), "image/png")})
        assert response.status_code == 201, response.text
        print("acknowledged", item["id"], flush=True)
print("finished", calls["n"], flush=True)
"""


def _run(script: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def _rebuild_killed_at(kill_at: int, tmp: Path, index_dir: Path, model_dir: Path, catalogue) -> None:
    index = tmp / "index"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(index_dir, index)
    done = _run(REBUILD, kill_at, model_dir, index)
    assert done.returncode in (0, 9), done.stderr[-2000:]
    searcher = load_searcher(index)  # a reader after the crash: it repairs an interrupted swap by itself
    assert len(searcher) in (len(catalogue), 90)  # the old index (80 items) or the new one (90), complete
    assert len(searcher.catalogue) == len(searcher.index)
    assert searcher.search(text="shirt", k=3).hits
    if done.returncode == 9:  # and the same build, run again, completes
        assert _run(REBUILD, 0, model_dir, index).returncode == 0
        assert len(load_searcher(index)) == 90


@pytest.mark.parametrize("kill_at", [40, 67])  # mid-write; between the swap's two renames
def test_a_rebuild_killed_mid_way_leaves_the_old_or_the_new_index(kill_at, tmp_path, tiny_index_dir,
                                                                 tiny_ensemble_dir, catalogue):
    _rebuild_killed_at(kill_at, tmp_path / "run", tiny_index_dir, tiny_ensemble_dir, catalogue)


@settings(SLOW, max_examples=15)
@given(kill_at=st.integers(1, 70))  # a rebuild of this index makes 68 fsyncs and renames
def test_a_rebuild_killed_at_any_fsync_or_rename_leaves_a_complete_index(kill_at, tmp_path_factory, tiny_index_dir,
                                                                         tiny_ensemble_dir, catalogue):
    _rebuild_killed_at(kill_at, tmp_path_factory.mktemp("kill"), tiny_index_dir, tiny_ensemble_dir, catalogue)


def _admin_killed_at(kill_at: int, tmp: Path) -> None:
    from fastapi.testclient import TestClient

    from enclip.serve.app import ServeCfg, create_app
    from tests.serve.fake_searcher import FakeSearcher

    log = tmp / "changes.jsonl"
    log.unlink(missing_ok=True)
    done = _run(ADMIN, kill_at, log)
    assert done.returncode in (0, 9), done.stderr[-2000:]
    acknowledged = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("acknowledged")]
    with TestClient(create_app(FakeSearcher(n=4), ServeCfg(changelog_path=log))) as restarted:
        for item_id in acknowledged:
            assert restarted.get(f"/items/{item_id}").status_code == 200, (kill_at, item_id)
    if log.exists():
        lines = log.read_bytes().split(b"\n")
        assert all(json.loads(line)["seq"] == n for n, line in enumerate(lines[:-1], 1))  # the intact prefix


@settings(SLOW, max_examples=25)
@given(kill_at=st.integers(1, 8))  # six admin changes make 7 fsyncs
def test_an_admin_change_killed_at_any_point_keeps_every_acknowledged_change(kill_at, tmp_path_factory):
    _admin_killed_at(kill_at, tmp_path_factory.mktemp("admin"))
