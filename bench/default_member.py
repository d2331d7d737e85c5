"""The default recipe's member, fresh, on a finished run's cached trunk features: what the step and validation
benches (`bench/allocator.py`, `bench/validation_cost.py`) time in their fresh processes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class DefaultMember:
    catalogue: object  # enclip.data.catalogue.Catalogue
    cfg: object  # enclip.train.run.RunCfg, the defaults
    ensemble: object  # one member, untrained heads
    train: object  # FeatureCache of the train split
    val: object  # FeatureCache of the validation split
    objective: object  # enclip.train.objective.Objective: the losses' training-only parts, as a step takes them
    groups: object  # torch tensor: title group of each train row
    batches: list[np.ndarray]  # the first epoch's batches of train rows, as the trainer orders them

    @property
    def heads(self):
        return self.ensemble.members[0]


def load_default_member(data: str, feature_cache: str, trunk_cache: str) -> DefaultMember:
    """Read the catalogue, the default recipe's feature caches (``feature_cache`` must hold them, built with
    ``trunk_cache``) and fresh heads; nothing is trained."""
    import torch

    from enclip.data.catalogue import load_catalogue
    from enclip.models.ensemble import Ensemble
    from enclip.models.registry import create_backbone
    from enclip.train.run import RunCfg, _caches, _split
    from enclip.train.objective import title_groups
    from enclip.train.trainer import MemberRun, _epoch_batches, member_objective

    catalogue = load_catalogue(data)[0]
    cfg = RunCfg(trunk_cache=trunk_cache)
    ensemble = Ensemble(create_backbone(cfg.backbone), cfg.train.heads, members=1)
    train, val = _caches(ensemble, catalogue, _split(catalogue), Path(feature_cache), cfg)
    objective = member_objective(ensemble, ensemble.members[0], train, cfg.train, 0)
    groups = torch.from_numpy(title_groups([catalogue.titles[p] for p in train.positions]))
    batches = _epoch_batches(MemberRun(np.arange(len(train)), 0, Path("unused")), 0, cfg.train.batch_size,
                             train.title_lengths())
    return DefaultMember(catalogue, cfg, ensemble, train, val, objective, groups, batches)
