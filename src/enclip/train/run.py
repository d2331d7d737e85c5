"""Train a single model or an ENCLIP ensemble end to end: split, cache trunks, cluster, train members, save.

Strategies decide what each member trains on:
- ``seeds``: every member sees the whole train split, with its own seed (data order, degraded views drawn, dropout);
- ``bagging``: each member sees a bootstrap resample of the train split;
- ``cluster``: member i sees cluster i's items plus a ``mix`` share drawn from the other clusters, in batches taken
  within one cluster (hard negatives); pair it with routed fusion.
Members train one after another; each finished member is a standalone model directory, so an interrupted run
loses at most the member in progress (and of that, at most the current epoch).
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from enclip.artifacts import manifest, write_json
from enclip.cluster import ClusterCfg, Clustering
from enclip.data.catalogue import Catalogue
from enclip.data.split import split_indices
from enclip.errors import EnclipError
from enclip.models.ensemble import Ensemble
from enclip.models.registry import BackboneCfg, create_backbone
from enclip.train.clusters import member_clusters
from enclip.train.features import FeatureCache, cache_features
from enclip.train.trainer import MemberRun, TrainCfg, resolve_device, title_groups, train_member

log = logging.getLogger(__name__)

STRATEGIES = ("seeds", "bagging", "cluster")


@dataclass
class EnsembleCfg:
    members: int = 1  # ensemble size K (1 = a single model)
    strategy: str = "seeds"  # "seeds", "bagging" or "cluster"
    mix: float = 0.3  # cluster strategy: share of a member's items drawn from the other clusters
    fusion: str = "mean"  # default fusion rule stored with the model
    cluster: ClusterCfg = field(default_factory=ClusterCfg)  # clustering of the train images (cluster strategy)
    data_fraction: float = 1.0  # share of the train split used (for limited-data experiments)


@dataclass
class RunCfg:
    backbone: BackboneCfg = field(default_factory=BackboneCfg)  # which CLIP to start from
    train: TrainCfg = field(default_factory=TrainCfg)  # how each member is fine-tuned
    ensemble: EnsembleCfg = field(default_factory=EnsembleCfg)  # how many members and how they differ
    keep_cache: bool = False  # keep the cached trunk features after training (they can be large)


def _train_positions(catalogue: Catalogue, fraction: float, seed: int) -> dict[str, np.ndarray]:
    split = split_indices(catalogue.ids)
    if not len(split["train"]) or not len(split["val"]):
        raise EnclipError(
            f"the catalogue has {len(split['train'])} train and {len(split['val'])} validation items; "
            "training needs both (ids ending in 1 are validation, 0 test, the rest train)"
        )
    if not 0 < fraction <= 1:
        raise EnclipError(f"data fraction must be in (0, 1], got {fraction}")
    if fraction < 1:
        keep = max(2, int(round(len(split["train"]) * fraction)))
        split["train"] = np.sort(np.random.default_rng(seed).choice(split["train"], keep, replace=False))
    return split


def member_runs(cfg: EnsembleCfg, train: FeatureCache, out_dir: Path, seed: int,
                clustering: Clustering | None) -> list[MemberRun]:
    """What each member trains on, by strategy."""
    n = len(train)
    runs = []
    for i in range(cfg.members):
        member_seed = seed * 1000 + i
        rng = np.random.default_rng([seed, i, 7])
        out = out_dir / "members" / str(i)
        if cfg.strategy == "seeds":
            runs.append(MemberRun(np.arange(n), member_seed, out))
        elif cfg.strategy == "bagging":
            runs.append(MemberRun(np.sort(rng.integers(0, n, size=n)), member_seed, out))
        else:
            runs.append(_cluster_run(clustering, i, cfg.mix, rng, member_seed, out))
    return runs


def _cluster_run(clustering: Clustering, i: int, mix: float, rng, seed: int, out: Path) -> MemberRun:
    own = np.flatnonzero(clustering.assignments == i)
    others = np.flatnonzero(clustering.assignments != i)
    extra = int(round(len(own) * mix / max(1e-9, 1 - mix))) if mix < 1 else len(others)
    borrowed = rng.choice(others, size=min(extra, len(others)), replace=False) if len(others) else others
    rows = np.sort(np.concatenate([own, borrowed]))
    return MemberRun(rows, seed, out, groups_of_rows=_row_groups(clustering.assignments, rows))


def _row_groups(assignments: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Cluster id looked up by row number (rows index the full training cache)."""
    groups = np.full(len(assignments), -1, dtype=np.int64)
    groups[rows] = assignments[rows]
    return groups


def train_system(catalogue: Catalogue, out_dir: str | Path, cfg: RunCfg, resume: bool = True) -> Path:
    """Train ``cfg.ensemble.members`` models on ``catalogue``'s train split; returns the model directory."""
    out_dir = Path(out_dir)
    ens = cfg.ensemble
    if ens.strategy not in STRATEGIES:
        raise EnclipError(f"unknown strategy {ens.strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if ens.members < 1:
        raise EnclipError("--members must be at least 1")
    if not resume and out_dir.exists() and any(out_dir.iterdir()):
        raise EnclipError(f"{out_dir} already holds a run; pass --resume to continue it or choose a new --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "train_config.json", asdict(cfg))
    torch.manual_seed(cfg.train.seed)
    started = time.perf_counter()
    split = _train_positions(catalogue, ens.data_fraction, cfg.train.seed)
    ensemble = Ensemble(create_backbone(cfg.backbone), cfg.train.heads, members=ens.members)
    ensemble.to(resolve_device(cfg.train.device))
    train_cache, val_cache = _caches(ensemble, catalogue, split, out_dir / "cache", cfg)
    clustering = None
    if ens.strategy == "cluster":
        clustering = member_clusters(train_cache.pooled_images(), train_cache.positions, catalogue,
                                     out_dir / "clusters", ens.members, ens.cluster)
    groups = title_groups([catalogue.titles[p] for p in train_cache.positions])
    fingerprint = catalogue.fingerprint()
    info = {"data_fingerprint": fingerprint, "train_items": int(len(train_cache))}
    for i, run in enumerate(member_runs(ens, train_cache, out_dir, cfg.train.seed, clustering)):
        log.info("training member %d of %d on %d items", i + 1, ens.members, len(run.rows))
        train_member(ensemble, i, train_cache, groups, val_cache, run, cfg.train, resume,
                     info={**info, "member": i, "strategy": ens.strategy, "member_items": int(len(run.rows))})
    write_json(out_dir / "ensemble.json", manifest(
        "ensemble", members=[f"members/{i}" for i in range(ens.members)], strategy=ens.strategy,
        weights=[], fusion=ens.fusion, data_fingerprint=fingerprint,
        clusters="clusters" if clustering is not None else None,
        train_seconds=round(time.perf_counter() - started, 1),
    ))
    if not cfg.keep_cache:
        shutil.rmtree(out_dir / "cache", ignore_errors=True)
    return out_dir


def _caches(ensemble, catalogue, split, cache_dir: Path, cfg: RunCfg) -> tuple[FeatureCache, FeatureCache]:
    common = dict(augment=cfg.train.augment, captions=cfg.train.captions, seed=cfg.train.seed)
    train = cache_features(ensemble, catalogue, split["train"], cache_dir / "train", views=cfg.train.views, **common)
    val = cache_features(ensemble, catalogue, split["val"], cache_dir / "val", views=0, **common)
    return train, val
