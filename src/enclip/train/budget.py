"""Fit training into a wall-clock budget: ``enclip train --time-budget 10m``.

A fixed epoch count trains well on one machine and overruns on a slower one (the default recipe's three epochs took
555 s on one 2-core machine and 888 s on another). Under a budget, each member measures what a training step and a
validation pass cost on this machine, then plans the most steps (up to ``--epochs`` epochs) that end within its
share of the time left after trunk caching. The learning-rate schedule is laid over those steps, so a shorter plan
still warms up and anneals fully; the last epoch may be cut short. The probe is a sample, though (a step's time
varied by 10-25% from one process to the next on the 2-core machine), so after its first :data:`REPLAN_AFTER`
steps a member plans once more from its own steps' time and a validation timed again in its warm process
(:func:`replan`), while the schedule is still near its top. At each epoch's end it fits the plan again to what is
left of the time it was planned for, at the step cost its latest epoch showed and the median cost of its latest
validations (:func:`refit`, :func:`typical_validation`): it cuts the plan when steps slowed down (they do as a run
goes on, and a validation can cost more than the probe's on a busy machine) and lengthens it when they ran faster
than planned, so that a budget's seconds are spent on steps, not left idle. The plan is saved in the member's
checkpoint, so a resumed run continues the same plan and ends with the same weights.

A plan validates after every epoch (``validations=None``: early stopping and the best epoch kept), or a fixed number
of times in all: under a budget, by default, only at its end (and at a snapshot ensemble's cycle ends), because a
validation costs as much as some 15 steps and a cosine schedule's last epoch is its best. Such a plan never ends on
an epoch of a few steps that pays a whole validation, and the steps it saves go into the plan.
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import asdict, dataclass, replace

from enclip.errors import EnclipError

SAFETY = 0.93  # share of a member's seconds planned for: steps and validations vary a few percent run to run
# real steps a member times before it plans again; the first REPLAN_SKIP of them (allocator warm-up) are not counted.
# At 24 of some 400 steps the cosine schedule is still at its top, so the new horizon barely moves the learning rate
REPLAN_AFTER = 24
REPLAN_SKIP = 4
# an epoch's end lengthens a plan only by more than this share of its steps: a longer plan moves the cosine schedule's
# horizon, so a few steps are not worth it. A first real epoch that ran 5-10% faster than the plan's 24 timed steps
# left 51 of 420 s and 87 of 600 s unused before plans could grow (RESULTS.md, issue 14, sixteenth pass)
GROW_MIN = 0.03

_UNITS = {"": 1, "s": 1, "m": 60, "min": 60, "h": 3600}


def parse_duration(text: str) -> float:
    """Seconds in ``"600"``, ``"600s"``, ``"10m"``, ``"1.5h"``; a clear error for anything else."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*(s|m|min|h)?\s*", str(text))
    if not match or float(match.group(1)) <= 0:
        raise EnclipError(f"--time-budget takes a positive duration such as 600, 600s, 10m or 1.5h; got {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2) or ""]


@dataclass(frozen=True)
class StepPlan:
    """How long one member trains: ``steps`` optimiser steps over ``epochs`` passes (the last one maybe partial)."""

    steps: int  # optimiser steps in all
    steps_per_epoch: int  # batches in a full pass over the member's items
    step_seconds: float | None = None  # measured cost of one step (None: no budget, epochs alone decide)
    validation_seconds: float | None = None  # measured cost of one end-of-epoch validation
    seconds: float | None = None  # the member's share of the budget the plan was made for
    measured_steps: int = 0  # real training steps done when ``step_seconds`` was timed on them (0: the probe's)
    # validations the plan pays for in all (its end, and a snapshot ensemble's cycle ends); None: one every epoch
    validations: int | None = None

    @property
    def epochs(self) -> int:
        return math.ceil(self.steps / self.steps_per_epoch)

    def steps_in_epoch(self, epoch: int) -> int:
        """Batches epoch ``epoch`` (0-based) runs: a full pass, or what is left of the plan in the last one."""
        return min(self.steps_per_epoch, self.steps - epoch * self.steps_per_epoch)

    def describe(self) -> str:
        text = f"{self.steps} steps ({self.steps / self.steps_per_epoch:.2f} epochs)"
        if self.seconds is None:
            return text
        timed = f" (timed on its own steps, {self.measured_steps} done)" if self.measured_steps else ""
        validations = "every epoch" if self.validations is None else f"{self.validations} in all"
        return (f"{text} in {self.seconds:.0f} s: {self.step_seconds:.2f} s a step{timed}, "
                f"{self.validation_seconds:.0f} s a validation ({validations})")

    def to_dict(self) -> dict:
        return asdict(self)


def full_plan(epochs: int, steps_per_epoch: int, validations: int | None = None) -> StepPlan:
    """No budget: every epoch in full."""
    return StepPlan(steps=epochs * steps_per_epoch, steps_per_epoch=steps_per_epoch, validations=validations)


def plan_steps(seconds: float, step_seconds: float, validation_seconds: float, steps_per_epoch: int,
               max_epochs: int, validations: int | None = None, spent: float = 0.0) -> StepPlan:
    """The most steps, at most ``max_epochs`` full epochs, whose steps and validations (one at every epoch's end, or
    ``validations`` in all) fit in ``SAFETY * seconds``, less the ``spent`` seconds of it already used. Raises a clear
    error when not even one step fits."""
    usable = SAFETY * seconds - spent
    best = 0
    for epochs in range(1, max_epochs + 1):
        fit = int((usable - (epochs if validations is None else validations) * validation_seconds) // step_seconds)
        steps = min(epochs * steps_per_epoch, fit)
        if steps > (epochs - 1) * steps_per_epoch:  # this many steps really need this many epochs
            best = steps
    if best < 1:
        raise EnclipError(
            f"the time budget leaves {max(0.0, seconds):.1f} s for this member's training, less than one step "
            f"({step_seconds:.3g} s) and a validation ({validation_seconds:.3g} s) take here; raise --time-budget "
            "(trunk caching counts towards it), or train fewer --members")
    return StepPlan(best, steps_per_epoch, round(step_seconds, 4), round(validation_seconds, 2), round(seconds, 1),
                    validations=validations)


def replan(plan: StepPlan, step_seconds: float, measured_steps: int, max_epochs: int, min_epochs: int = 1,
           validation_seconds: float | None = None) -> StepPlan:
    """The plan ``plan`` becomes once its member has timed ``measured_steps`` real steps at ``step_seconds`` each (and
    a validation again at ``validation_seconds``, when given): the plan its probe would have made with those
    figures, in the same seconds. It keeps the steps already run and, for a snapshot ensemble, an epoch per cycle
    (``min_epochs``); a member whose steps have outrun the budget ends there.
    """
    if validation_seconds is not None:
        plan = replace(plan, validation_seconds=round(validation_seconds, 2))
    try:
        steps = plan_steps(plan.seconds, step_seconds, plan.validation_seconds, plan.steps_per_epoch, max_epochs,
                           plan.validations).steps
    except EnclipError:  # not even one step fits: the steps so far have used the member's time
        steps = measured_steps
    steps = max(steps, measured_steps, (min_epochs - 1) * plan.steps_per_epoch + 1)
    return replace(plan, steps=steps, step_seconds=round(step_seconds, 4), measured_steps=measured_steps)


RECENT_VALIDATIONS = 3  # validations whose median :func:`refit` plans the rest with


def typical_validation(seconds: list[float | None], planned: float = 0.0) -> float:
    """What the next validation will cost: the median of the latest :data:`RECENT_VALIDATIONS` timed ones, or
    ``planned`` before any was timed. One slow validation (another process busy for a while) is not the rule, and a
    cut made on it is never undone: in a 30-minute run one validation took 24 s against 15-17 s and cut 64 steps
    (RESULTS.md, issue 14, eleventh pass). ``None`` marks an epoch not validated, or a validation not timed (a
    checkpoint written before validations were timed apart)."""
    timed = [s for s in seconds if s is not None][-RECENT_VALIDATIONS:]
    return float(statistics.median(timed)) if timed else planned


def refit(plan: StepPlan, spent: float, step_seconds: float, validation_seconds: float, done_steps: int,
          min_epochs: int = 0, validations: int | None = None, max_epochs: int | None = None,
          run_step_seconds: float | None = None) -> StepPlan:
    """At an epoch's end, ``spent`` seconds into the member's share: ``plan`` fitted to the steps that fit in what is
    left of the time it was made for (``SAFETY`` of the share, so the margin for a slow last epoch stays as large as
    it was planned; a margin taken of the time left would shrink as the run goes on, and grow a plan that is merely
    on pace into it), at the costs the member's latest epoch showed (``step_seconds`` a step,
    ``validation_seconds`` a validation). A plan that no longer fits is cut. One whose steps ran faster than planned
    grows, up to ``max_epochs`` epochs in all (default: its own), when it gains more than :data:`GROW_MIN` of its
    steps at the slower of the latest epoch's step cost and ``run_step_seconds`` (the mean over the member's steps so
    far): one fast epoch is not a trend, and a plan that grew on it would be cut at the next epoch's end, its learning
    rate moved up and down (a 50%-data run swung 690 → 828 → 695 steps so, RESULTS.md, sixteenth pass). Otherwise it
    comes back as it is.
    ``min_epochs``: epochs the plan keeps, its last cut to a step if need be (a snapshot ensemble keeps an epoch for
    each cycle still to end, since its members are saved at epoch ends).
    ``validations``: those still to pay in all (a plan that validates only at its end); None: one every epoch to
    come, this epoch's being paid already."""
    if plan.seconds is None or done_steps >= plan.steps:
        return plan
    epochs_left = max(plan.epochs, max_epochs or 0) - done_steps // plan.steps_per_epoch

    def fitting(cost: float) -> int:
        """Steps in all, those run included, that fit what is left of the planned time at ``cost`` a step."""
        try:
            return done_steps + plan_steps(plan.seconds, cost, validation_seconds, plan.steps_per_epoch, epochs_left,
                                           validations, spent=spent).steps
        except EnclipError:  # not one more step fits
            return done_steps

    cost = step_seconds
    steps = fitting(cost)
    if steps >= plan.steps:  # on pace or ahead: it grows as far as the run's mean step cost allows too
        cost = max(step_seconds, run_step_seconds or 0.0)
        steps = fitting(cost)
        if steps <= plan.steps * (1 + GROW_MIN):
            return plan
    if min_epochs:
        steps = max(steps, (min_epochs - 1) * plan.steps_per_epoch + 1)
    if steps == plan.steps:
        return plan
    return replace(plan, steps=steps, step_seconds=round(cost, 4), validation_seconds=round(validation_seconds, 2),
                   measured_steps=done_steps)
