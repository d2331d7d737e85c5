"""Snapshot ensembles (K members from one run's learning-rate cycles), their soup, and hard-negative batches."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from enclip.artifacts import read_json
from enclip.cluster.kmeans import Clustering
from enclip.errors import EnclipError
from enclip.models.ensemble import load_model
from enclip.models.soup import average_states, soup
from enclip.train import schedule, trainer
from enclip.train.run import train_system
from tests.conftest import tiny_run_cfg
from tests.core.test_train import interrupted_then_resumed


def test_one_cycle_is_the_plain_warm_up_and_cosine_schedule():
    factor = schedule.lr_factor(steps_per_epoch=10, epochs=5, warmup=0.1)
    warm = 5  # 10% of 50 steps
    assert [factor(s) for s in range(warm)] == pytest.approx([(s + 1) / warm for s in range(warm)])
    assert factor(warm) == pytest.approx(1.0)
    assert factor(27) == pytest.approx(0.5 * (1 + math.cos(math.pi * 22 / 45)))
    assert factor(49) < 0.01


def test_cycles_restart_the_learning_rate_at_each_cycle_start():
    assert schedule.cycle_ends(5, 3) == [2, 3, 5] and schedule.cycle_ends(6, 3) == [2, 4, 6]
    factor = schedule.lr_factor(steps_per_epoch=10, epochs=6, warmup=0.1, cycles=3)
    for start, stop in [(20, 40), (40, 60)]:
        assert factor(start) == pytest.approx(1.0)  # restarted at the top, no warm-up after the first cycle
        assert factor(stop - 1) < 0.01  # annealed to nearly zero by the cycle's end
    assert factor(19) < 0.02 and factor(0) < 1  # the first cycle warms up, then anneals
    with pytest.raises(EnclipError, match="--epochs"):
        schedule.cycle_ends(2, 3)


def test_cycle_shares_set_each_cycles_length_and_restarts_can_peak_lower():
    assert schedule.cycle_ends(4, 2, (0.75, 0.25)) == [3, 4]
    assert schedule.cycle_ends(8, 3, (2, 1, 1)) == [4, 6, 8]
    assert schedule.cycle_ends(3, 3, (0.9, 0.05, 0.05)) == [1, 2, 3], "every cycle keeps an epoch"
    assert schedule.cycle_ends(5, 2, (0.1, 0.9)) == [1, 5]
    factor = schedule.lr_factor(steps_per_epoch=10, epochs=4, warmup=0.1, cycles=2, shares=(0.75, 0.25),
                               restart_lr=0.25)
    assert factor(3) == pytest.approx(1.0) and factor(29) < 0.01  # the first cycle: 30 steps, at the full peak
    assert factor(30) == pytest.approx(0.25) and factor(39) < 0.01  # the restart: 10 steps, at a quarter of it
    for shares in ((0.5,), (0.5, 0.0), (1.0, -1.0)):
        with pytest.raises(EnclipError, match="--cycle-shares"):
            schedule.cycle_ends(4, 2, shares)


def test_a_budgets_short_last_epoch_does_not_become_a_cycle_of_its_own():
    # 553 steps of 138 are 4 epochs and 1 step: split by steps, not into 5 epochs' worth
    assert schedule.cycle_ends(5, 2, (0.75, 0.25), length=553 / 138) == [3, 5]
    assert schedule.cycle_ends(5, 2, (0.75, 0.25)) == [4, 5], "counted in whole epochs, the last cycle is 1 step"
    assert schedule.cycle_ends(5, 3, length=553 / 138) == [1, 3, 5]
    assert schedule.cycle_ends(6, 3, length=6.0) == schedule.cycle_ends(6, 3) == [2, 4, 6]
    factor = schedule.lr_factor(steps_per_epoch=138, epochs=5, warmup=0.05, cycles=2, steps=553, shares=(0.75, 0.25),
                               restart_lr=0.5)
    assert factor(414) == pytest.approx(0.5) and factor(552) < 0.01  # the restart spans the last 139 steps


def test_cycle_ends_already_passed_stay_put_when_a_cut_moves_the_split():
    assert schedule.settled_ends([3, 5], [2, 5], done=3) == [3, 5]  # member 0 was saved at epoch 3
    assert schedule.settled_ends([1, 3, 5], [2, 4, 5], done=1) == [1, 4, 5]
    assert schedule.settled_ends([2, 4, 6], [1, 2, 6], done=2) == [2, 3, 6], "a missing end takes the next epoch"
    assert schedule.settled_ends([], [2, 4], done=0) == [2, 4]


def test_cycle_settings_are_refused_outside_a_snapshot_ensemble(tmp_path, catalogue):
    with pytest.raises(EnclipError, match="--strategy snapshot"):
        train_system(catalogue, tmp_path / "a", tiny_run_cfg(members=1, cycle_shares=(1.0,)))
    with pytest.raises(EnclipError, match="above 0"):
        train_system(catalogue, tmp_path / "b", tiny_run_cfg(members=2, strategy="snapshot", restart_lr=0.0))
    with pytest.raises(EnclipError, match="--cycle-shares"):
        train_system(catalogue, tmp_path / "c", tiny_run_cfg(members=2, strategy="snapshot", cycle_shares=(1.0,)))


def test_a_snapshot_ensemble_with_a_long_first_cycle_saves_members_at_its_cycle_ends(tmp_path, catalogue):
    cfg = tiny_run_cfg(members=2, strategy="snapshot", epochs=4, cycle_shares=(0.75, 0.25), restart_lr=0.25)
    out = train_system(catalogue, tmp_path / "fge", cfg)
    assert [read_json(out / "members" / str(i) / "model.json")["epoch"] for i in range(2)] == [3, 4]
    trajectory = torch.load(out / "members/trajectory/checkpoint.pt", weights_only=False)
    assert trajectory["state"]["cycle_ends"] == [3, 4], "a resumed run reads its cycle ends back"


def test_a_snapshot_ensemble_keeps_each_cycles_end_as_a_member(tmp_path, catalogue):
    out = train_system(catalogue, tmp_path / "snap", tiny_run_cfg(members=3, strategy="snapshot", epochs=3, lr=5e-3))
    ensemble, info = load_model(out)
    assert info.strategy == "snapshot" and len(ensemble) == 3
    assert [read_json(out / "members" / str(i) / "model.json")["epoch"] for i in range(3)] == [1, 2, 3]
    states = [member.state_dict() for member in ensemble.members]
    assert not torch.equal(states[0]["logit_scale"], states[1]["logit_scale"])
    trajectory = torch.load(out / "members/trajectory/checkpoint.pt", weights_only=False)
    assert len(trajectory["state"]["history"]) == 3, "one run of 3 epochs, not 3 runs"
    for key, value in trajectory["member"].items():
        assert torch.equal(value, states[2][key]), key  # the last member is where the trajectory ended
    assert read_json(out / "ensemble.json")["members"] == ["members/0", "members/1", "members/2"]


def test_snapshot_needs_an_epoch_per_member_before_any_work(tmp_path, catalogue):
    with pytest.raises(EnclipError, match="--epochs"):
        train_system(catalogue, tmp_path / "s", tiny_run_cfg(members=3, strategy="snapshot", epochs=2))
    assert not (tmp_path / "s" / "cache").exists()


@pytest.mark.slow  # a resume- or kill-equivalence run: the slow set
def test_an_interrupted_snapshot_run_resumes_to_the_same_members(tmp_path, catalogue, monkeypatch):
    cfg = tiny_run_cfg(members=2, strategy="snapshot", epochs=4)
    reference = load_model(train_system(catalogue, tmp_path / "straight", cfg))[0]
    # after the first member's cycle, in the second
    resumed = load_model(interrupted_then_resumed(catalogue, cfg, tmp_path / "resumed", monkeypatch,
                                                  at_validation=3))[0]
    for ref, got in zip(reference.members, resumed.members):
        for key, value in ref.state_dict().items():
            assert torch.equal(value, got.state_dict()[key]), key


def test_a_soup_is_one_model_with_the_members_mean_weights(tmp_path, catalogue):
    snap = train_system(catalogue, tmp_path / "snap", tiny_run_cfg(members=2, strategy="snapshot", epochs=2, lr=5e-3))
    members = [m.state_dict() for m in load_model(snap)[0].members]
    out = soup(snap, tmp_path / "soup")
    model, info = load_model(out)
    assert len(model) == 1 and info.strategy == "single"
    for key, value in model.members[0].state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(value, (members[0][key] + members[1][key]) / 2, atol=1e-6), key
    assert read_json(out / "model.json")["data_fingerprint"] == catalogue.fingerprint()
    with pytest.raises(EnclipError, match="already holds a model"):
        soup(snap, out)


def test_a_soup_of_unrelated_members_is_refused(tmp_path, tiny_ensemble_dir):
    with pytest.raises(EnclipError, match="--strategy snapshot"):
        soup(tiny_ensemble_dir, tmp_path / "soup")
    assert not (tmp_path / "soup").exists()


def test_average_states_keeps_integer_buffers():
    a = {"w": torch.tensor([1.0, 3.0]), "n": torch.tensor(4)}
    b = {"w": torch.tensor([3.0, 5.0]), "n": torch.tensor(9)}
    mean = average_states([a, b])
    assert torch.equal(mean["w"], torch.tensor([2.0, 4.0]))
    assert mean["n"].item() == 4 and mean["n"].dtype == a["n"].dtype


def test_batch_clusters_draw_every_batch_within_one_cluster(tmp_path, catalogue, monkeypatch):
    seen = []
    real = trainer._epoch_batches

    def record(run, epoch, batch_size, lengths=None):
        batches = real(run, epoch, batch_size, lengths)
        seen.append((run.groups_of_rows, batches))
        return batches

    monkeypatch.setattr(trainer, "_epoch_batches", record)
    out = train_system(catalogue, tmp_path / "hard", tiny_run_cfg(epochs=1, batch_size=8, batch_clusters=2))
    clustering = Clustering.load(out / "batch-clusters")
    assert clustering.k == 2
    groups, batches = seen[-1]
    assert groups is not None and len(batches) > 1
    for batch in batches:
        assert len(np.unique(groups[batch])) == 1, "a batch mixes clusters"
    assert {int(groups[b[0]]) for b in batches} == {0, 1}, "batches come from every cluster"


def test_enclip_soup_writes_a_model_and_refuses_other_strategies_by_name(tmp_path, catalogue, tiny_ensemble_dir,
                                                                         capsys):
    from enclip.cli import main

    snap = train_system(catalogue, tmp_path / "snap", tiny_run_cfg(members=2, strategy="snapshot", epochs=2))
    assert main(["soup", str(snap), "--out", str(tmp_path / "soup")]) == 0
    assert len(load_model(tmp_path / "soup")[0]) == 1
    assert main(["soup", str(tiny_ensemble_dir), "--out", str(tmp_path / "other")]) == 2
    assert "--strategy snapshot" in capsys.readouterr().err
