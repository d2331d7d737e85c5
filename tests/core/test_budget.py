"""Training within a wall-clock budget (`enclip train --time-budget`): the plan, the run it gives, resume, errors."""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from enclip.artifacts import read_json
from enclip.cli import build_parser
from enclip.errors import EnclipError
from enclip.train import budget, schedule, trainer
from enclip.train.budget import (
    GROW_MIN,
    SAFETY,
    StepPlan,
    full_plan,
    parse_duration,
    plan_steps,
    refit,
    replan,
    typical_validation,
)
from enclip.train.run import train_system
from tests.conftest import tiny_run_cfg
from tests.core.test_train import _heads, interrupted_then_resumed


@pytest.mark.parametrize("text, seconds", [("600", 600), ("600s", 600), ("10m", 600), ("1.5h", 5400), (" 90 ", 90)])
def test_durations_read_as_people_write_them(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "-5m", "ten minutes", "10d", "5m30s"])
def test_a_bad_duration_is_a_clear_error(text, capsys):
    with pytest.raises(EnclipError, match="600, 600s, 10m or 1.5h"):
        parse_duration(text)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--out", "x", "--time-budget", text])
    assert "--time-budget" in capsys.readouterr().err


def test_the_plan_takes_the_most_steps_that_fit_with_a_validation_per_epoch_begun():
    # 100 s of which SAFETY is planned; 10 batches an epoch at 2 s, 5 s per validation
    usable = SAFETY * 100
    plan = plan_steps(100, step_seconds=2.0, validation_seconds=5.0, steps_per_epoch=10, max_epochs=9)
    # 3 epochs' validations would leave time for 39 steps, which need a 4th epoch and its validation: 36 steps
    assert plan.steps == int((usable - 4 * 5) // 2) == 36
    assert plan.epochs == 4 and plan.steps_in_epoch(0) == 10 and plan.steps_in_epoch(3) == 6
    # enough time for every epoch: the plan stops at max_epochs, in full
    assert plan_steps(10_000, 2.0, 5.0, 10, max_epochs=3).steps == 30
    # a validation that would start an epoch for too few steps is not worth it: 10 steps fit, the 11th does not
    tight = plan_steps((10 * 2 + 5 + 5) / SAFETY, 2.0, 5.0, steps_per_epoch=10, max_epochs=3)
    assert tight.steps == 10 and tight.epochs == 1


def test_a_plan_that_validates_at_its_end_spends_the_validations_it_saves_on_steps():
    # the budget above: one validation in all, not one per epoch, leaves 44 steps where a validation per epoch left 36
    plan = plan_steps(100, step_seconds=2.0, validation_seconds=5.0, steps_per_epoch=10, max_epochs=9, validations=1)
    assert (plan.steps, plan.validations) == (int((SAFETY * 100 - 5) // 2), 1) == (44, 1)
    assert "1 in all" in plan.describe() and "every epoch" in plan_steps(100, 2.0, 5.0, 10, 9).describe()
    # a short last epoch costs no validation of its own: the 11th and 12th steps fit where one epoch of 10 stopped
    assert plan_steps((10 * 2 + 5 + 5) / SAFETY, 2.0, 5.0, 10, max_epochs=3, validations=1).steps == 12
    # a snapshot ensemble of 3 pays for 3, one per cycle's end
    assert plan_steps(100, 2.0, 5.0, 10, max_epochs=9, validations=3).steps == int((SAFETY * 100 - 15) // 2)


def test_a_budget_too_small_for_one_step_says_so():
    with pytest.raises(EnclipError, match="raise --time-budget"):
        plan_steps(3.0, step_seconds=2.0, validation_seconds=5.0, steps_per_epoch=10, max_epochs=3)
    with pytest.raises(EnclipError, match="leaves 0.0 s"):
        plan_steps(-40.0, step_seconds=2.0, validation_seconds=5.0, steps_per_epoch=10, max_epochs=3)


def test_the_schedule_over_a_plan_warms_up_and_anneals_within_the_planned_steps():
    factor = schedule.lr_factor(steps_per_epoch=20, epochs=2, warmup=0.1, steps=30)
    assert [factor(s) for s in range(3)] == pytest.approx([1 / 3, 2 / 3, 1.0])  # 10% of the 30 planned steps
    assert factor(29) < 0.01  # annealed by the last planned step, half-way through the second epoch


@pytest.fixture
def plans_never_grow(monkeypatch):
    """Tiny steps take milliseconds, so an epoch's end would lengthen a plan made from a stand-in probe's 10 s a step
    to all of --epochs; tests of the plan the probe makes keep it (growing is tested on its own)."""
    monkeypatch.setattr(budget, "GROW_MIN", math.inf)


def _fixed_costs(step_seconds: float, validation_seconds: float = 0.0):
    """Stands in for the timed probe, so a plan does not depend on how fast the test machine is."""
    return lambda *args, **kwargs: (step_seconds, validation_seconds)


@pytest.mark.usefixtures("plans_never_grow")
def test_a_budgeted_run_trains_the_planned_steps_and_saves_the_plan(tmp_path, catalogue, monkeypatch):
    monkeypatch.setattr(trainer, "_measure_costs", _fixed_costs(10.0))
    # 64 training items in batches of 16: 4 steps an epoch, 8 in two epochs; 75 s at 10 s a step affords 6 (and
    # still does if trunk caching takes up to 10 s of the budget on a busy machine)
    cfg = replace(tiny_run_cfg(epochs=2, patience=5), time_budget=75.0)
    out = train_system(catalogue, tmp_path / "m", cfg)
    saved = torch.load(out / "members/0/checkpoint.pt", weights_only=False)
    plan = StepPlan(**saved["state"]["plan"])
    assert (plan.steps, plan.steps_per_epoch, plan.step_seconds) == (6, 4, 10.0)
    assert len(saved["state"]["history"]) == 2, "the second epoch runs, cut short"
    assert [entry["steps"] for entry in saved["state"]["history"]] == [4, 2], "each epoch counts the steps it ran"
    assert max(entry["step"] for entry in saved["optimizer"]["state"].values()) == 6


def _validations_counted(monkeypatch) -> list[int]:
    real, calls = trainer.validation_recall, []

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "validation_recall", counted)
    return calls


@pytest.mark.usefixtures("plans_never_grow")
def test_a_budgeted_run_validates_only_its_last_epoch_unless_asked_for_every_one(tmp_path, catalogue, monkeypatch):
    monkeypatch.setattr(trainer, "_measure_costs", _fixed_costs(10.0, 5.0))
    calls = _validations_counted(monkeypatch)
    # 3 epochs of 4 steps, 10 s a step and 5 s a validation: 10 steps fit with one validation, 9 with three
    cfg = replace(tiny_run_cfg(epochs=3, patience=5), time_budget=120.0)
    out = train_system(catalogue, tmp_path / "last", cfg)
    saved = torch.load(out / "members/0/checkpoint.pt", weights_only=False)
    history = saved["state"]["history"]
    assert [entry["val_R@10"] is None for entry in history] == [True, True, False] and len(calls) == 1
    assert [entry["validation_seconds"] is None for entry in history] == [True, True, False]
    assert saved["state"]["plan"]["validations"] == 1 and saved["state"]["plan"]["steps"] == 10
    model = json.loads((out / "members/0/model.json").read_text())
    assert (model["best_val_recall_at_10"], model["epoch"]) == (history[-1]["val_R@10"], 3)
    # asked for every epoch: three validations, whose cost the plan pays (one step fewer: 9 of 12)
    calls.clear()
    every = train_system(catalogue, tmp_path / "every", replace(cfg, train=replace(cfg.train, validate="every")))
    saved = torch.load(every / "members/0/checkpoint.pt", weights_only=False)
    assert len(calls) == 3 and all(entry["val_R@10"] is not None for entry in saved["state"]["history"])
    assert saved["state"]["plan"]["validations"] is None and saved["state"]["plan"]["steps"] == 9
    # without a budget, "auto" validates every epoch; "last" validates once, budget or not
    calls.clear()
    train_system(catalogue, tmp_path / "auto", tiny_run_cfg(epochs=2, patience=5))
    train_system(catalogue, tmp_path / "once", tiny_run_cfg(epochs=2, patience=5, validate="last"))
    assert len(calls) == 2 + 1


def test_an_unknown_validate_mode_is_a_clear_error(tmp_path, catalogue):
    with pytest.raises(EnclipError, match="unknown --validate 'sometimes'; choose one of auto, every, last"):
        train_system(catalogue, tmp_path / "m", tiny_run_cfg(epochs=1, validate="sometimes"))


def test_without_a_budget_every_epoch_runs_in_full(tmp_path, catalogue, monkeypatch):
    monkeypatch.setattr(trainer, "_measure_costs", lambda *a, **k: pytest.fail("no budget, no probe"))
    out = train_system(catalogue, tmp_path / "m", tiny_run_cfg(epochs=2, patience=5))
    saved = torch.load(out / "members/0/checkpoint.pt", weights_only=False)
    assert saved["state"]["plan"]["steps"] == 8 and saved["state"]["plan"]["seconds"] is None


@pytest.mark.usefixtures("plans_never_grow")
def test_members_share_the_budget_and_each_plans_its_own_share(tmp_path, catalogue, monkeypatch):
    monkeypatch.setattr(trainer, "_measure_costs", _fixed_costs(10.0))
    cfg = replace(tiny_run_cfg(members=2, epochs=2, patience=5), time_budget=140.0)
    out = train_system(catalogue, tmp_path / "m", cfg)
    plans = [torch.load(out / f"members/{i}/checkpoint.pt", weights_only=False)["state"]["plan"] for i in range(2)]
    assert plans[0]["seconds"] < 70.0 and plans[0]["steps"] == 6  # half of what caching left
    # the second gets all that is left, and the first really took a second or two, not its planned 60 s
    assert plans[1]["seconds"] > 100.0 and plans[1]["steps"] == 8


# interrupted at the second epoch's validation: the second of two (every epoch validated), or the only one
RESUME_POINTS = [("every", 2), ("last", 1)]


@pytest.mark.parametrize("validate, at_validation", RESUME_POINTS)
def test_a_resumed_budgeted_run_keeps_its_plan_and_ends_with_the_same_weights(tmp_path, catalogue, monkeypatch,
                                                                              validate, at_validation):
    monkeypatch.setattr(trainer, "_measure_costs", _fixed_costs(10.0))
    cfg = replace(tiny_run_cfg(epochs=2, patience=5, validate=validate), time_budget=75.0)  # 6 steps, as above
    reference = _heads(train_system(catalogue, tmp_path / "straight", cfg))
    calls = {"n": 0}

    def slower_after_the_first_plan(*args, **kwargs):
        calls["n"] += 1
        return (10.0 if calls["n"] == 1 else 30.0), 0.0

    monkeypatch.setattr(trainer, "_measure_costs", slower_after_the_first_plan)
    resumed = _heads(interrupted_then_resumed(catalogue, cfg, tmp_path / "resumed", monkeypatch, at_validation))
    assert calls["n"] == 1, "the resumed run does not plan again"
    for key, value in reference[0].items():
        assert torch.equal(value, resumed[0][key]), key


def test_a_snapshot_ensemble_whose_budget_affords_too_few_epochs_says_so(tmp_path, catalogue, monkeypatch):
    monkeypatch.setattr(trainer, "_measure_costs", _fixed_costs(10.0))
    cfg = replace(tiny_run_cfg(members=3, strategy="snapshot", epochs=3), time_budget=70.0)
    with pytest.raises(EnclipError, match="an epoch per member"):
        train_system(catalogue, tmp_path / "s", cfg)


def test_the_probe_times_real_steps_without_touching_the_members_weights(tmp_path, catalogue, monkeypatch):
    real, seen = trainer._measure_costs, {}

    def recording(heads, *args, **kwargs):
        before = {k: v.clone() for k, v in heads.state_dict().items()}
        costs = real(heads, *args, **kwargs)
        seen["unchanged"] = all(torch.equal(before[k], v) for k, v in heads.state_dict().items())
        seen["costs"] = costs
        return costs

    monkeypatch.setattr(trainer, "_measure_costs", recording)
    train_system(catalogue, tmp_path / "m", replace(tiny_run_cfg(epochs=1), time_budget=600.0))
    step_seconds, validation_seconds = seen["costs"]
    assert seen["unchanged"] and step_seconds > 0 and validation_seconds > 0


def test_the_probe_times_batches_across_the_spread_of_title_lengths(monkeypatch):
    import numpy as np

    monkeypatch.setattr(trainer, "PROBE_STEPS", 4)

    # batch i holds rows whose longest title has i + 1 tokens; batches come shuffled, as an epoch's do
    lengths = np.arange(1, 21)
    batches = [np.array([i]) for i in np.random.default_rng(0).permutation(20)]
    picked = trainer._probe_batches(batches, lengths)
    timed = sorted(int(lengths[rows].max()) for rows in picked[1:])
    assert len(picked) == trainer.PROBE_STEPS + 1
    assert timed == [3, 8, 13, 18]  # the quantiles 1/8, 3/8, 5/8, 7/8 of the 20 batches, not 4 random draws
    assert len(trainer._probe_batches(batches[:2], lengths)) == trainer.PROBE_STEPS + 1  # fewer batches than steps


class _Clock:
    """The trainer's clock: real time plus the seconds stand-ins say they took, so a test can make a probe or a
    validation "take" minutes without waiting for them."""

    def __init__(self):
        self.skipped = 0.0

    def perf_counter(self) -> float:
        return time.perf_counter() + self.skipped


def _taking(seconds: float, clock: _Clock, stand_in):
    """``stand_in`` as it is, except that it takes ``seconds`` more on ``clock``."""
    def slow(*args, **kwargs):
        clock.skipped += seconds
        return stand_in(*args, **kwargs)
    return slow


def test_a_member_that_overruns_its_share_says_so(tmp_path, catalogue, monkeypatch, caplog):
    clock = _Clock()
    monkeypatch.setattr(trainer, "time", clock)
    monkeypatch.setattr(trainer, "_measure_costs", _fixed_costs(0.001))
    # the one validation, at the end, takes 1,000 s of a 600 s budget
    monkeypatch.setattr(trainer, "validation_recall", _taking(1000.0, clock, trainer.validation_recall))
    with caplog.at_level("WARNING", logger="enclip.train.trainer"):
        train_system(catalogue, tmp_path / "m", replace(tiny_run_cfg(epochs=2, patience=5), time_budget=600.0))
    assert "slower than planned" in caplog.text and "larger --time-budget" in caplog.text


def test_a_member_within_its_share_does_not_warn_though_its_probe_took_most_of_it(tmp_path, catalogue, monkeypatch,
                                                                                 caplog):
    clock = _Clock()
    monkeypatch.setattr(trainer, "time", clock)
    # the probe takes 500 s of a 600 s budget: the plan is made for the rest, and the member, probe included, ends
    # within its share (its plan's own seconds, which leave the probe out, are not what it is held to)
    monkeypatch.setattr(trainer, "_measure_costs", _taking(500.0, clock, _fixed_costs(0.001)))
    with caplog.at_level("INFO", logger="enclip.train.trainer"):
        train_system(catalogue, tmp_path / "m", replace(tiny_run_cfg(epochs=2, patience=5), time_budget=600.0))
    planned = StepPlan(**torch.load(tmp_path / "m/members/0/checkpoint.pt", weights_only=False)["state"]["plan"])
    assert planned.seconds < 100, "the plan is made for what the probe left"
    assert "share of the time budget" not in caplog.text
    assert "member 0 epoch 2" in caplog.text, "it trained to its end"


def test_a_plan_made_again_from_real_steps_is_the_plan_the_probe_would_have_made_with_them():
    # 100 s, a validation 5 s, 100 steps an epoch: the probe read 2 s a step, so 44 steps in one epoch fit 93 s
    probed = plan_steps(100.0, 2.0, 5.0, steps_per_epoch=100, max_epochs=5)
    assert probed.steps == 44 and probed.measured_steps == 0
    faster = replan(probed, 1.0, 24, max_epochs=5)
    assert faster == replace(plan_steps(100.0, 1.0, 5.0, 100, 5), measured_steps=24)  # 88 steps
    assert faster.steps == 88 and faster.seconds == probed.seconds
    assert "timed on its own steps, 24 done" in faster.describe()
    assert replan(probed, 3.0, 24, max_epochs=5).steps == 29  # slower: fewer steps, same seconds
    assert replan(probed, 4.0, 24, max_epochs=5).steps == 24  # never fewer than already run
    assert replan(probed, 500.0, 24, max_epochs=5).steps == 24  # the time is gone: it ends where it is
    assert replan(probed, 4.0, 24, max_epochs=5, min_epochs=3).steps == 201  # a snapshot keeps an epoch a cycle
    # a validation timed again: the probe's 5 s were 25 s, so at 1 s a step only 68 steps fit (93 s less 25)
    retimed = replan(probed, 1.0, 24, max_epochs=5, validation_seconds=25.0)
    assert (retimed.steps, retimed.validation_seconds) == (68, 25.0) and "25 s a validation" in retimed.describe()


def test_a_budgeted_member_plans_again_from_its_own_first_steps(tmp_path, catalogue, monkeypatch):
    # the probe reads 10 s a step (6 of 8 steps fit 70 s); the member's own steps take milliseconds, so after its
    # first two it plans both epochs in full, and the schedule runs over all 8 steps
    monkeypatch.setattr(trainer, "_measure_costs", _fixed_costs(10.0))
    monkeypatch.setattr(trainer, "_validation_seconds", lambda *args: 0.5)
    monkeypatch.setattr(trainer, "REPLAN_AFTER", 2)
    monkeypatch.setattr(trainer, "REPLAN_SKIP", 0)
    cfg = replace(tiny_run_cfg(epochs=2, patience=5), time_budget=70.0)
    out = train_system(catalogue, tmp_path / "m", cfg)
    saved = torch.load(out / "members/0/checkpoint.pt", weights_only=False)
    plan = StepPlan(**saved["state"]["plan"])
    assert (plan.steps, plan.measured_steps) == (8, 2) and plan.step_seconds < 10.0
    assert plan.validation_seconds == 0.5  # timed again in the run (the probe said 0.0)
    assert max(entry["step"] for entry in saved["optimizer"]["state"].values()) == 8
    assert saved["scheduler"]["last_epoch"] == 8


@pytest.mark.parametrize("validate, at_validation", RESUME_POINTS)
def test_a_run_resumed_after_planning_again_keeps_the_new_plan_and_ends_with_the_same_weights(tmp_path, catalogue,
                                                                                               monkeypatch, validate,
                                                                                               at_validation):
    monkeypatch.setattr(trainer, "_measure_costs", _fixed_costs(10.0))
    monkeypatch.setattr(trainer, "REPLAN_AFTER", 2)
    monkeypatch.setattr(trainer, "REPLAN_SKIP", 0)
    cfg = replace(tiny_run_cfg(epochs=2, patience=5, validate=validate), time_budget=75.0)
    reference = _heads(train_system(catalogue, tmp_path / "straight", cfg))
    resumed = _heads(interrupted_then_resumed(catalogue, cfg, tmp_path / "resumed", monkeypatch, at_validation))
    for key, value in reference[0].items():
        assert torch.equal(value, resumed[0][key]), key


def test_an_epoch_end_cuts_the_plan_to_what_still_fits_at_the_latest_costs():
    # 3 epochs of 10 steps planned in 100 s at 2 s a step and 5 s a validation
    plan = StepPlan(steps=30, steps_per_epoch=10, step_seconds=2.0, validation_seconds=5.0, seconds=100.0)
    # the first epoch ran at 4 s a step: of the SAFETY * 100 s the plan was made for, the 43 s left fit 9 more steps
    # and a validation, not 8 over two epochs and their validations
    slow = refit(plan, spent=45.0 + 5.0, step_seconds=4.0, validation_seconds=5.0, done_steps=10)
    assert (slow.steps, slow.epochs, slow.step_seconds, slow.measured_steps) == (19, 2, 4.0, 10)
    assert int((SAFETY * 100 - 50 - 5) // 4) == 9
    # a slow validation alone cuts too: at 15 s a validation, the 58 s left fit 14 more steps, the last epoch cut
    assert refit(plan, spent=20.0 + 15.0, step_seconds=2.0, validation_seconds=15.0, done_steps=10).steps == 10 + 14
    assert int((SAFETY * 100 - 35 - 2 * 15) // 2) == 14
    # on pace, or faster with no epoch left to grow into (the plan's own, by default): the same plan
    assert refit(plan, spent=25.0, step_seconds=2.0, validation_seconds=5.0, done_steps=10) is plan
    assert refit(plan, spent=5.0, step_seconds=0.1, validation_seconds=0.1, done_steps=10) is plan
    # out of time: stop after the epoch just run; a snapshot ensemble keeps an epoch for each cycle still to end, the
    # last cut to a step
    assert refit(plan, spent=99.0, step_seconds=2.0, validation_seconds=5.0, done_steps=10).steps == 10
    assert refit(plan, spent=99.0, step_seconds=2.0, validation_seconds=5.0, done_steps=10, min_epochs=3).steps == 21
    assert refit(plan, spent=99.0, step_seconds=2.0, validation_seconds=5.0, done_steps=10, min_epochs=2).steps == 11
    # a snapshot may now lose whole epochs when they do not fit, as long as each pending cycle keeps one
    assert refit(plan, spent=80.0, step_seconds=2.0, validation_seconds=5.0, done_steps=10, min_epochs=2).steps == 14
    assert refit(plan, spent=80.0, step_seconds=2.0, validation_seconds=5.0, done_steps=10, min_epochs=3).steps == 21
    # no budget, or nothing left to run: unchanged
    assert refit(full_plan(3, 10), spent=1e6, step_seconds=9.0, validation_seconds=9.0, done_steps=10).steps == 30
    assert refit(plan, spent=1e6, step_seconds=9.0, validation_seconds=9.0, done_steps=30) is plan


def test_an_epoch_end_lengthens_a_plan_whose_steps_ran_faster_up_to_the_epochs_allowed():
    # 2.5 epochs of 10 steps planned in 100 s at 3 s a step; the first epoch ran at 2 s a step (20 s and a 5 s
    # validation): what is left of the SAFETY * 100 s planned for fits 26 steps over 3 more epochs and their
    # validations
    plan = StepPlan(steps=25, steps_per_epoch=10, step_seconds=3.0, validation_seconds=5.0, seconds=100.0)
    grown = refit(plan, spent=25.0, step_seconds=2.0, validation_seconds=5.0, done_steps=10, max_epochs=4)
    assert int((SAFETY * 100 - 25 - 3 * 5) // 2) == 26
    assert (grown.steps, grown.epochs, grown.step_seconds, grown.measured_steps) == (10 + 26, 4, 2.0, 10)
    # never past the epochs allowed (--epochs): 3 epochs in all hold 30 steps
    assert refit(plan, spent=25.0, step_seconds=2.0, validation_seconds=5.0, done_steps=10, max_epochs=3).steps == 30
    # a plan already at its epoch cap stays as it is, however fast its steps
    capped = StepPlan(steps=30, steps_per_epoch=10, step_seconds=3.0, validation_seconds=5.0, seconds=100.0)
    assert refit(capped, spent=5.0, step_seconds=0.1, validation_seconds=0.1, done_steps=10, max_epochs=3) is capped
    # a gain of GROW_MIN of the plan or less leaves it as it is: the schedule's horizon does not move for a step
    near = StepPlan(steps=35, steps_per_epoch=10, step_seconds=2.0, validation_seconds=5.0, seconds=100.0)
    assert refit(near, spent=25.0, step_seconds=2.0, validation_seconds=5.0, done_steps=10, max_epochs=4) is near
    assert 35 < 36 <= 35 * (1 + GROW_MIN)
    # a plan whose epochs run exactly as planned stays as it is at every epoch's end: the margin it keeps for a slow
    # last epoch is not grown into (a margin taken of the time left would have grown it to 39 steps after epoch 3)
    on_pace = plan_steps(100.0, 2.0, 5.0, steps_per_epoch=10, max_epochs=6)
    assert on_pace.steps == 36
    for epoch, spent in [(1, 25.0), (2, 50.0), (3, 75.0)]:
        assert refit(on_pace, spent=spent, step_seconds=2.0, validation_seconds=5.0, done_steps=10 * epoch,
                     max_epochs=6) is on_pace
    # one fast epoch in a slower run: the plan grows only as far as the run's mean step cost allows (at 3 s a step,
    # 19 more steps over 2 epochs), and not at all when at that cost it would not gain more than GROW_MIN
    slower = refit(plan, spent=25.0, step_seconds=2.0, validation_seconds=5.0, done_steps=10, max_epochs=4,
                   run_step_seconds=3.0)
    assert (slower.steps, slower.step_seconds) == (10 + int((SAFETY * 100 - 25 - 2 * 5) // 3), 3.0) == (29, 3.0)
    assert refit(plan, spent=25.0, step_seconds=2.0, validation_seconds=5.0, done_steps=10, max_epochs=4,
                 run_step_seconds=4.0) is plan
    # a plan that validates only at its end owes one validation, not one an epoch
    once = replace(plan, validations=1)
    grown_once = refit(once, spent=20.0, step_seconds=2.0, validation_seconds=5.0, done_steps=10, validations=1,
                       max_epochs=5)
    assert grown_once.steps == 10 + int((SAFETY * 100 - 20 - 5) // 2) == 44 and grown_once.validations == 1


@pytest.mark.parametrize("strategy, members", [("seeds", 1), ("snapshot", 2)])
def test_a_budgeted_run_whose_steps_ran_faster_than_planned_grows_its_plan_at_an_epoch_end(
        tmp_path, catalogue, monkeypatch, strategy, members):
    # the probe reads 10 s a step: 75 s afford 6 steps (1.5 epochs of 4); the real steps take milliseconds, so the
    # first epoch's end lengthens the plan to the 4 epochs --epochs allows, and the schedule runs over all 16 steps
    monkeypatch.setattr(trainer, "_measure_costs", _fixed_costs(10.0))
    cfg = replace(tiny_run_cfg(members=members, strategy=strategy, epochs=4, patience=5), time_budget=75.0)
    out = train_system(catalogue, tmp_path / strategy, cfg)
    saved = torch.load(next(out.glob("members/*/checkpoint.pt")), weights_only=False)
    plan = StepPlan(**saved["state"]["plan"])
    assert (plan.steps, plan.measured_steps) == (16, 4) and plan.step_seconds < 10.0
    assert len(saved["state"]["history"]) == 4 and saved["state"]["done"]
    assert [entry["steps"] for entry in saved["state"]["history"]] == [4, 4, 4, 4]
    assert max(entry["step"] for entry in saved["optimizer"]["state"].values()) == 16
    assert saved["scheduler"]["last_epoch"] == 16 and saved["scheduler"]["_last_lr"][0] == pytest.approx(0.0)
    if strategy == "snapshot":  # the first cycle ended, as first planned, after epoch 1; the second at the new end
        assert saved["state"]["cycle_ends"] == [1, 4]
        assert [read_json(out / "members" / str(i) / "model.json")["epoch"] for i in range(2)] == [1, 4]


def test_the_next_validation_is_costed_at_the_median_of_the_latest_three_so_one_slow_one_does_not_cut_the_plan():
    assert typical_validation([16.0]) == 16.0
    assert typical_validation([15.0, 16.0, 24.0]) == 16.0  # one slow validation (a busy machine) is passed over
    assert typical_validation([40.0, 15.0, 16.0, 17.0]) == 16.0  # only the latest three count
    assert typical_validation([30.0, 31.0, 16.0]) == 30.0  # validations that stay slow are believed
    assert typical_validation([None, 12.0]) == 12.0 and typical_validation([None]) == 0.0  # untimed ones skipped
    assert typical_validation([None, None], planned=13.0) == 13.0  # none timed yet: the plan's own figure


def test_a_plan_that_validates_at_its_end_keeps_one_validation_when_it_cuts():
    plan = StepPlan(steps=30, steps_per_epoch=10, step_seconds=2.0, validation_seconds=5.0, seconds=100.0,
                    validations=1)
    # the first epoch ran at 4 s a step and was not validated: what is left of the SAFETY * 100 s planned for, less
    # the one validation still owed, fits 12 steps (a validation for each of two epochs to come would leave 10)
    cut = refit(plan, spent=40.0, step_seconds=4.0, validation_seconds=5.0, done_steps=10, validations=1)
    assert cut.steps == 10 + int((SAFETY * 100 - 40 - 5) // 4) == 22 and cut.validations == 1
    assert refit(plan, spent=40.0, step_seconds=4.0, validation_seconds=5.0, done_steps=10).steps == 20


@pytest.mark.parametrize("validate", ["every", "last"])
def test_a_budgeted_run_cuts_its_plan_at_an_epoch_end_with_its_own_costs_and_stops_there(tmp_path, catalogue,
                                                                                        monkeypatch, validate):
    monkeypatch.setattr(trainer, "_measure_costs", _fixed_costs(10.0, 1.0))
    calls, seen = _validations_counted(monkeypatch), []

    def out_of_time(plan, spent, step_seconds, validation_seconds, done_steps, min_epochs=0, validations=None,
                    **growth):
        seen.append((plan.steps, spent, step_seconds, validation_seconds, done_steps, min_epochs, validations))
        return refit(plan, plan.seconds, step_seconds, validation_seconds, done_steps, min_epochs, validations,
                     **growth)

    monkeypatch.setattr(trainer, "refit", out_of_time)
    # 6 steps planned over 2 epochs of 4 (as above); the first epoch's end finds the member's seconds spent
    cfg = replace(tiny_run_cfg(epochs=2, patience=5, validate=validate), time_budget=75.0)
    out = train_system(catalogue, tmp_path / "m", cfg)
    (planned, spent, step_seconds, validation_seconds, done, keep, validations), = seen
    assert (planned, done, keep) == (6, 4, 0) and spent > 0 and step_seconds > 0  # this run's epoch, not the probe
    saved = torch.load(out / "members/0/checkpoint.pt", weights_only=False)
    assert saved["state"]["plan"]["steps"] == 4 and len(saved["state"]["history"]) == 1 and saved["state"]["done"]
    # the epoch the cut made the last one is validated once, whether or not it was to be (its member is saved)
    assert len(calls) == 1 and saved["state"]["history"][0]["val_R@10"] is not None
    if validate == "every":  # validated before the cut, at its own timed cost; nothing more to pay
        assert validations is None
        assert saved["state"]["history"][0]["validation_seconds"] == pytest.approx(validation_seconds, abs=0.01)
    else:  # not yet validated when cut: the cut kept the plan's one validation, costed as planned (none timed yet)
        assert (validations, validation_seconds) == (1, 1.0)
        assert saved["state"]["history"][0]["validation_seconds"] > 0
    assert max(entry["step"] for entry in saved["optimizer"]["state"].values()) == 4
    assert (out / "members/0/model.json").exists(), "the member trained so far is saved"


def test_timing_a_validation_leaves_the_member_training_with_its_weights_and_norm_statistics(tmp_path, catalogue):
    from enclip.models.ensemble import Ensemble
    from enclip.models.registry import create_backbone
    from enclip.train.features import cache_features

    cfg = tiny_run_cfg()
    ensemble = Ensemble(create_backbone(cfg.backbone), cfg.train.heads)
    cache = cache_features(ensemble, catalogue, np.arange(40), tmp_path / "cache", views=0)
    member = ensemble.members[0]
    member.train()
    before = {key: value.clone() for key, value in member.state_dict().items()}
    seconds = trainer._validation_seconds(member, cache, cfg.train, ensemble.device, 22000, 2000)
    assert seconds > 0 and member.training
    assert all(torch.equal(value, member.state_dict()[key]) for key, value in before.items())  # running stats too


def test_a_snapshot_out_of_time_drops_whole_epochs_yet_saves_every_member(tmp_path, catalogue, monkeypatch):
    monkeypatch.setattr(trainer, "_measure_costs", _fixed_costs(1.0, 0.1))

    def out_of_time(plan, spent, step_seconds, validation_seconds, done_steps, min_epochs=0, validations=None,
                    **growth):
        return refit(plan, plan.seconds, step_seconds, validation_seconds, done_steps, min_epochs, validations,
                     **growth)

    monkeypatch.setattr(trainer, "refit", out_of_time)
    # 4 steps an epoch, 4 epochs planned in 2 cycles (ends after epochs 2 and 4); out of time after epoch 1, the plan
    # keeps an epoch for each cycle: 2 more epochs, the last of one step, and the cycles end after epochs 2 and 3
    cfg = replace(tiny_run_cfg(members=2, strategy="snapshot", epochs=4), time_budget=200.0)
    out = train_system(catalogue, tmp_path / "snap", cfg)
    trajectory = torch.load(out / "members/trajectory/checkpoint.pt", weights_only=False)
    assert trajectory["state"]["plan"]["steps"] == 9 and trajectory["state"]["cycle_ends"] == [2, 3]
    assert [read_json(out / "members" / str(i) / "model.json")["epoch"] for i in range(2)] == [2, 3]
