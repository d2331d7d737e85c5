"""Model soup: one model whose weights are the mean of a snapshot ensemble's members.

Averaging weights (Izmailov et al. 2018, "Averaging weights leads to wider optima"; Wortsman et al. 2022, "Model
soups") gives one model, so one model's query cost, and can keep part of an ensemble's gain. It is meaningful only
for members on one training trajectory, which is what ``--strategy snapshot`` trains: members of the other
strategies start from their own random projections, and the mean of unrelated weights is noise. Batch-norm running
statistics are averaged like the weights.
"""

from __future__ import annotations

from pathlib import Path

import torch

from enclip.artifacts import read_json
from enclip.errors import EnclipError
from enclip.models.ensemble import load_model, read_model_info


def average_states(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean of state dicts with the same keys; integer buffers (batch counters) come from the first."""
    return {name: torch.stack([state[name].float() for state in states]).mean(dim=0).to(first.dtype)
            if first.is_floating_point() else first.clone() for name, first in states[0].items()}


def soup(model_dir: str | Path, out_dir: str | Path) -> Path:
    """Write the weight average of the snapshot ensemble in ``model_dir`` as a single model in ``out_dir``."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    info = read_model_info(model_dir)
    if info.strategy != "snapshot":
        raise EnclipError(f"{model_dir} is a {info.strategy!r} model; a soup averages the members of one training "
                          "trajectory, so train it with --strategy snapshot --members K")
    if (out_dir / "model.json").exists() or (out_dir / "ensemble.json").exists():
        raise EnclipError(f"{out_dir} already holds a model; choose another --out (nothing was overwritten)")
    ensemble, _ = load_model(model_dir)
    ensemble.members[0].load_state_dict(average_states([member.state_dict() for member in ensemble.members]))
    first = read_json(model_dir / info.members[0] / "model.json")
    ensemble.save_member(0, out_dir, data_fingerprint=info.data_fingerprint, train_items=first.get("train_items"),
                         soup_of=[str(model_dir / member) for member in info.members])
    return out_dir
