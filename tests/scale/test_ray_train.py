"""Ensemble members trained as Ray tasks equal the local engine's, seed for seed."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

pytest.importorskip("ray")

from enclip.artifacts import read_json  # noqa: E402
from enclip.models.ensemble import load_model  # noqa: E402
from enclip.train.run import train_system  # noqa: E402
from tests.conftest import tiny_run_cfg  # noqa: E402

pytestmark = pytest.mark.slow


def heads(model_dir) -> list[dict[str, torch.Tensor]]:
    ensemble, _ = load_model(model_dir)
    return [member.state_dict() for member in ensemble.members]


def test_two_members_as_ray_tasks_equal_the_local_run(tmp_path, catalogue):
    cfg = tiny_run_cfg(members=2, strategy="bagging", epochs=2, patience=5)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as each Ray task does (one CPU a member): bit-equality needs the same summation order
    try:
        local = train_system(catalogue, tmp_path / "local", cfg)
    finally:
        torch.set_num_threads(before)
    on_ray = train_system(catalogue, tmp_path / "ray", replace(cfg, engine="ray"))
    for want, got in zip(heads(local), heads(on_ray), strict=True):
        assert want.keys() == got.keys()
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=0, atol=0, msg=name)
    histories = [read_json(path / "ensemble.json")["member_train_seconds"] for path in (local, on_ray)]
    assert all(seconds is not None for seconds in histories[1]), "every member's epochs were timed on Ray too"
    assert torch.load(on_ray / "members/1/checkpoint.pt", weights_only=False)["state"]["done"]
    assert not (on_ray / "ray-features").exists(), "the feature cache published for the tasks is removed"


def test_members_as_ray_tasks_each_plan_the_whole_time_left_under_a_budget(tmp_path, catalogue):
    cfg = replace(tiny_run_cfg(members=2, strategy="bagging", epochs=2, patience=5), engine="ray", time_budget=600.0)
    out = train_system(catalogue, tmp_path / "ray", cfg)
    plans = [torch.load(out / f"members/{i}/checkpoint.pt", weights_only=False)["state"]["plan"] for i in range(2)]
    # side by side, each member may use all the time caching left (one after another, each would get half)
    assert all(plan["seconds"] > 300 and plan["step_seconds"] > 0 for plan in plans)
    assert all(plan["steps"] == 2 * plan["steps_per_epoch"] for plan in plans), "tiny steps: both epochs fit"
