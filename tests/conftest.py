"""Session fixtures shared across test packages: a synthetic catalogue, and tiny trained models and indexes.

The tiny backbone is untrained and a few hundred kilobytes, so a whole train → index → search cycle takes seconds.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from enclip.data.catalogue import Catalogue
from tests.data.conftest import REAL_DATA, make_items

torch.set_num_threads(1)  # tiny models: one thread is faster than two contending ones

TINY_TRAIN = dict(epochs=2, batch_size=16, val_items=0)


def synthetic_catalogue(n: int = 80, seed: int = 0) -> Catalogue:
    items = make_items(n, seed=seed)
    attributes = {name: [item.attributes[name] for item in items] for name in items[0].attributes}
    return Catalogue(ids=[i.id for i in items], titles=[i.title for i in items], attributes=attributes,
                     images=[i.image for i in items], source="synthetic")


def tiny_run_cfg(members: int = 1, strategy: str = "seeds", **train):
    from enclip.models.registry import BackboneCfg
    from enclip.train.run import EnsembleCfg, RunCfg
    from enclip.train.trainer import TrainCfg

    return RunCfg(
        backbone=BackboneCfg(name="tiny", embed_dim=16, image_size=32, context_length=16),
        train=TrainCfg(**{**TINY_TRAIN, **train}),
        ensemble=EnsembleCfg(members=members, strategy=strategy),
    )


@pytest.fixture(scope="session")
def catalogue() -> Catalogue:
    return synthetic_catalogue()


@pytest.fixture(scope="session")
def tiny_ensemble_dir(tmp_path_factory, catalogue) -> Path:
    from enclip.train.run import train_system

    return train_system(catalogue, tmp_path_factory.mktemp("ensemble"), tiny_run_cfg(members=3, strategy="cluster"))


@pytest.fixture(scope="session")
def tiny_index_dir(tmp_path_factory, catalogue, tiny_ensemble_dir) -> Path:
    from enclip.indexing import build_index

    return build_index(tiny_ensemble_dir, catalogue, tmp_path_factory.mktemp("index") / "index")


@pytest.fixture
def real_data() -> Path:
    if not REAL_DATA.exists():
        pytest.skip(f"the shared catalogue is not at {REAL_DATA}")
    return REAL_DATA
