"""A member's learning-rate schedule: linear warm-up then cosine decay, in one cycle or, for a snapshot ensemble,
in K cycles whose ends (whole epochs) are the members; and how those ends settle when a time budget's plan changes.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

import numpy as np

from enclip.errors import EnclipError


def cycle_ends(epochs: int, cycles: int, shares: Sequence[float] = (), length: float | None = None) -> list[int]:
    """The epoch after which each learning-rate cycle ends: ``cycles`` cycles as even as whole epochs allow, or in
    proportion to ``shares``; each keeps at least one epoch, and the last ends with the last epoch.

    ``length``: the training's length in epochs when its last epoch is partial (a time budget's plan of 4 epochs
    and 1 step is 4.007 long, not 5), so that cycles split the steps, not a count that a short last epoch inflates.
    """
    if not 1 <= cycles <= epochs:
        raise EnclipError(f"{cycles} learning-rate cycles need at least as many epochs (got --epochs {epochs}); "
                          "a snapshot ensemble of K members needs --epochs K or more")
    if shares:
        check_cycle_shares(shares, cycles)
    cumulative = np.cumsum(shares or [1.0] * cycles) / float(np.sum(shares or [1.0] * cycles))
    length = float(epochs if length is None else length)
    ends: list[int] = []
    for cycle, share in enumerate(cumulative):
        lowest, highest = (ends[-1] if ends else 0) + 1, epochs - (cycles - 1 - cycle)
        ends.append(min(max(round(length * float(share)), lowest), highest))
    ends[-1] = epochs
    return ends


def epochs_kept(done: int, snapshot_epochs: Sequence[int]) -> int:
    """Epochs a cut must leave a snapshot ensemble: those done, and one for each cycle still to end (0: no
    snapshot, no floor)."""
    return done + sum(end > done for end in snapshot_epochs) if snapshot_epochs else 0


def settled_ends(before: Sequence[int], after: Sequence[int], done: int) -> list[int]:
    """Cycle ends after a plan changed ``done`` epochs in: ends already passed stay as they were (their members are
    saved), and the rest come from the new plan, in the epochs still ahead."""
    kept = [end for end in before if end <= done]
    ahead = [end for end in after if end > done]
    need = len(after) - len(kept)
    ahead = ahead[len(ahead) - need:] if len(ahead) >= need else ahead
    spare = [epoch for epoch in range(done + 1, after[-1] + 1) if epoch not in ahead]
    return kept + sorted(ahead + spare[: need - len(ahead)])


def check_cycle_shares(shares: Sequence[float], cycles: int) -> None:
    if len(shares) != cycles or any(not share > 0 for share in shares):
        raise EnclipError(f"--cycle-shares gives each of the {cycles} snapshot members' learning-rate cycles a "
                          f"positive share of the epochs; got {list(shares)}")


def lr_factor(steps_per_epoch: int, epochs: int, warmup: float, cycles: int = 1, steps: int | None = None,
              shares: Sequence[float] = (), restart_lr: float = 1.0, ends: Sequence[int] | None = None):
    """Learning-rate factor per step: linear warm-up, then cosine decay to zero, restarted ``cycles`` times at
    ``restart_lr`` of the top (cosine annealing with warm restarts, Loshchilov & Hutter 2017; the warm-up is in the
    first cycle only), the cycles' lengths by ``shares`` (see cycle_ends) or ending after the epochs ``ends``.
    ``steps`` (a time budget's plan) ends the last cycle early, inside the last epoch."""
    if ends is None:
        ends = cycle_ends(epochs, cycles, shares, None if steps is None else steps / steps_per_epoch)
    cycles = len(ends)
    bounds = [0] + [end * steps_per_epoch for end in ends]
    if steps is not None:
        bounds[-1] = min(bounds[-1], steps)
    warm = max(1, int(bounds[1] * warmup))

    def factor(step: int) -> float:
        cycle = min(bisect.bisect_right(bounds, step) - 1, cycles - 1)
        if cycle == 0 and step < warm:
            return (step + 1) / warm
        begin = warm if cycle == 0 else bounds[cycle]
        progress = (step - begin) / max(1, bounds[cycle + 1] - begin)
        return (1.0 if cycle == 0 else restart_lr) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor
