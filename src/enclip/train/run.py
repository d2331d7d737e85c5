"""Train a single model or an ENCLIP ensemble end to end: split, cache trunks, cluster, train members, save.

Strategies decide what each member trains on:
- ``seeds``: every member sees the whole train split, with its own seed (data order, degraded views drawn, dropout);
- ``bagging``: each member sees a bootstrap resample of the train split;
- ``cluster``: member i sees cluster i's items plus a ``mix`` share drawn from the other clusters, in batches taken
  within one cluster (hard negatives); pair it with routed fusion;
- ``snapshot``: one training run whose learning rate restarts K times; the weights at the end of each cycle are
  the members (Huang et al. 2017, "Snapshot ensembles: train 1, get M for free"), so K members cost one model's
  epochs. Its members share one trajectory, so ``enclip soup`` can average them into one model.
Members train one after another; each finished member is a standalone model directory, so an interrupted run
loses at most the member in progress (and of that, at most the current epoch).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from enclip.artifacts import manifest, read_json, write_json
from enclip.cluster.kmeans import ClusterCfg, Clustering, fit_clusters
from enclip.data.catalogue import Catalogue
from enclip.data.split import split_indices
from enclip.embed.space import l2_normalise
from enclip.embed.trunk_cache import catalogue_image_features
from enclip.errors import EnclipError
from enclip.models.device import keep_freed_memory, resolve_device
from enclip.models.ensemble import Ensemble
from enclip.models.registry import BackboneCfg, create_backbone
from enclip.train.alignment import PROJECTION_INITS
from enclip.train.features import FeatureCache, cache_features
from enclip.train.specialists import member_clusters
from enclip.train.objective import check_loss, title_groups
from enclip.train.schedule import cycle_ends
from enclip.train.trainer import MemberRun, TrainCfg, train_member

log = logging.getLogger(__name__)

STRATEGIES = ("seeds", "bagging", "cluster", "snapshot")
# where and how it runs, not what it learns
RESUME_MAY_CHANGE = ("train.device", "train.compile", "keep_cache", "cache_dir", "trunk_cache", "engine",
                     "ray_address")


@dataclass
class EnsembleCfg:
    members: int = 1  # ensemble size K (1 = a single model)
    strategy: str = "seeds"  # "seeds", "bagging", "cluster" or "snapshot"
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
    cache_dir: str | None = None  # shared trunk-feature cache, reused by runs with the same trunk and data
    trunk_cache: str | None = None  # catalogue-wide clean image trunk cache, shared with `enclip index --trunk-cache`
    engine: str = "local"  # "local": members one after another; "ray": members as Ray tasks (enclip[scale])
    ray_address: str | None = None  # engine "ray": the cluster's HOST:PORT; None = a local cluster on 127.0.0.1
    # seconds the whole run may take, trunk caching included: each member plans the most steps (up to
    # train.epochs epochs) that fit its share of what caching leaves (train/budget.py); None = epochs alone decide
    time_budget: float | None = None


def _split(catalogue: Catalogue) -> dict[str, np.ndarray]:
    split = split_indices(catalogue.ids)
    if not len(split["train"]) or not len(split["val"]):
        raise EnclipError(
            f"the catalogue has {len(split['train'])} train and {len(split['val'])} validation items; "
            "training needs both (ids ending in 1 are validation, 0 test, the rest train)"
        )
    return split


def subset_rows(n: int, fraction: float, seed: int) -> np.ndarray:
    """Rows of the training cache used for limited-data runs (a seeded sample; all rows at fraction 1)."""
    if not 0 < fraction <= 1:
        raise EnclipError(f"data fraction must be in (0, 1], got {fraction}")
    if fraction == 1:
        return np.arange(n)
    keep = max(2, int(round(n * fraction)))
    return np.sort(np.random.default_rng([seed, 11]).choice(n, keep, replace=False))


def member_runs(cfg: EnsembleCfg, rows: np.ndarray, out_dir: Path, seed: int,
                clustering: Clustering | None) -> list[MemberRun]:
    """What each member trains on (``rows`` of the training cache), by strategy."""
    if cfg.strategy == "snapshot":  # one trajectory; each learning-rate cycle's end is saved as a member
        snapshots = tuple(out_dir / "members" / str(i) for i in range(cfg.members))
        return [MemberRun(rows, seed * 1000, out_dir / "members" / "trajectory", snapshots=snapshots)]
    runs = []
    for i in range(cfg.members):
        member_seed = seed * 1000 + i
        rng = np.random.default_rng([seed, i, 7])
        out = out_dir / "members" / str(i)
        if cfg.strategy == "seeds":
            runs.append(MemberRun(rows, member_seed, out))
        elif cfg.strategy == "bagging":
            runs.append(MemberRun(np.sort(rng.choice(rows, size=len(rows), replace=True)), member_seed, out))
        else:
            runs.append(_cluster_run(clustering, rows, i, cfg.mix, rng, member_seed, out))
    return runs


def _cluster_run(clustering: Clustering, rows: np.ndarray, i: int, mix: float, rng, seed: int, out: Path) -> MemberRun:
    """Cluster i's rows plus a ``mix`` share borrowed from the others; batches stay within one cluster."""
    own = rows[clustering.assignments == i]
    others = rows[clustering.assignments != i]
    extra = int(round(len(own) * mix / max(1e-9, 1 - mix))) if mix < 1 else len(others)
    borrowed = rng.choice(others, size=min(extra, len(others)), replace=False) if len(others) else others
    groups = np.full(int(rows.max()) + 1, -1, dtype=np.int64)
    groups[rows] = clustering.assignments
    return MemberRun(np.sort(np.concatenate([own, borrowed])), seed, out, groups_of_rows=groups)


def train_system(catalogue: Catalogue, out_dir: str | Path, cfg: RunCfg, resume: bool = True) -> Path:
    """Train ``cfg.ensemble.members`` models on ``catalogue``'s train split; returns the model directory."""
    out_dir = Path(out_dir)
    ens = cfg.ensemble
    if ens.strategy not in STRATEGIES:
        raise EnclipError(f"unknown strategy {ens.strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if ens.members < 1:
        raise EnclipError("--members must be at least 1")
    if not 0 <= cfg.train.mirror <= 1:
        raise EnclipError(f"--mirror is a share of the training photos, from 0 (off) to 1, got {cfg.train.mirror}")
    share = cfg.train.degraded_share
    if share is not None and not (0 <= share <= 1 and (share == 0 or cfg.train.views > 0)):
        raise EnclipError(f"--degraded-share is a share of the training photos, from 0 to 1, and needs --views 1 or "
                          f"more to draw from; got {share} with --views {cfg.train.views}")
    if (cfg.train.cycle_shares or cfg.train.restart_lr != 1.0) and ens.strategy != "snapshot":
        raise EnclipError("--cycle-shares and --restart-lr shape a snapshot ensemble's learning-rate cycles; use them "
                          "with --strategy snapshot")
    check_loss(cfg.train.loss)
    if cfg.train.projection_init not in PROJECTION_INITS:
        raise EnclipError(f"unknown projection start {cfg.train.projection_init!r}; choose one of "
                          f"{', '.join(PROJECTION_INITS)}")
    if cfg.train.temperature is not None and not cfg.train.temperature > 0:
        raise EnclipError(f"--temperature is above 0 (CLIP starts from 0.07), got {cfg.train.temperature}")
    if not cfg.train.restart_lr > 0:
        raise EnclipError(f"--restart-lr is the peak learning-rate factor of the later cycles, above 0; got "
                          f"{cfg.train.restart_lr}")
    if ens.strategy == "snapshot":
        cycle_ends(cfg.train.epochs, ens.members, cfg.train.cycle_shares)  # refuses too few epochs before caching
        if cfg.engine == "ray":
            raise EnclipError("a snapshot ensemble is one training run, which Ray cannot spread; "
                              "use --engine local, or another --strategy to train members as Ray tasks")
    if not resume and (out_dir / "train_config.json").exists():
        raise EnclipError(f"{out_dir} already holds a run; pass --resume to continue it or choose a new --out")
    if resume and (out_dir / "train_config.json").exists():
        _check_same_settings(out_dir, cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "train_config.json", asdict(cfg))
    keep_freed_memory()  # a training step's tensors reuse freed memory instead of faulting in fresh pages
    torch.manual_seed(cfg.train.seed)
    started = time.perf_counter()
    ensemble = Ensemble(create_backbone(cfg.backbone), cfg.train.heads, members=ens.members)
    ensemble.to(resolve_device(cfg.train.device))
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else out_dir / "cache"
    train_cache, val_cache = _caches(ensemble, catalogue, _split(catalogue), cache_dir, cfg)
    rows = subset_rows(len(train_cache), ens.data_fraction, cfg.train.seed)
    clustering = None
    if ens.strategy == "cluster":
        clustering = member_clusters(train_cache.pooled_images(cfg.train.heads.colour)[rows],
                                     train_cache.positions[rows], catalogue, out_dir / "clusters", ens.members,
                                     ens.cluster)
    runs = member_runs(ens, rows, out_dir, cfg.train.seed, clustering)
    if cfg.train.batch_clusters and ens.strategy != "cluster":  # the cluster strategy batches within clusters already
        within = _batch_groups(train_cache, rows, out_dir / "batch-clusters", cfg)
        runs = [replace(run, groups_of_rows=within) for run in runs]
    groups = title_groups([catalogue.titles[p] for p in train_cache.positions])
    fingerprint = catalogue.fingerprint()
    info = {"data_fingerprint": fingerprint, "train_items": int(len(rows))}
    member_seconds = []  # each member's epochs and validations, summed over resumed runs (None: not all timed)
    infos = [{**info, "member": i, "strategy": ens.strategy, "member_items": int(len(run.rows))}
             for i, run in enumerate(runs)]
    deadline = None if cfg.time_budget is None else started + cfg.time_budget
    for state in _train_members(ensemble, runs, infos, train_cache, groups, val_cache, cfg, resume, out_dir, deadline):
        timed = [entry.get("seconds") for entry in state["history"]]
        member_seconds.append(None if None in timed else round(sum(timed), 1))
    for i, directory in enumerate(runs[0].snapshots):
        ensemble.load_member(i, directory)
    write_json(out_dir / "ensemble.json", manifest(
        "ensemble", members=[f"members/{i}" for i in range(ens.members)], strategy=ens.strategy,
        fusion=ens.fusion, data_fingerprint=fingerprint,
        clusters="clusters" if clustering is not None else None,
        train_seconds=round(time.perf_counter() - started, 1), member_train_seconds=member_seconds,
    ))
    if not cfg.cache_dir and not cfg.keep_cache:
        shutil.rmtree(cache_dir, ignore_errors=True)
    return out_dir


def _batch_groups(train_cache: FeatureCache, rows: np.ndarray, directory: Path, cfg: RunCfg) -> np.ndarray:
    """Cluster id per training-cache row (-1 outside ``rows``) for hard-negative batches: spherical k-means on the
    pooled trunk features of the train images, fitted once and reused on resume."""
    if (directory / "clusters.json").exists():
        clustering = Clustering.load(directory)
    else:
        clustering = fit_clusters(l2_normalise(train_cache.pooled_images(cfg.train.heads.colour)[rows]),
                                  replace(cfg.ensemble.cluster, k=cfg.train.batch_clusters, seed=cfg.train.seed))
        clustering.save(directory)
        log.info("hard-negative batches within %d clusters of sizes %s", clustering.k, clustering.sizes.tolist())
    groups = np.full(len(train_cache), -1, dtype=np.int64)
    groups[rows] = clustering.assignments
    return groups


class SettingsChanged(EnclipError):
    """A run resumed with settings other than its own; ``changed`` lists them ("key saved (asked new)")."""

    def __init__(self, message: str, changed: str):
        super().__init__(message)
        self.changed = changed


def _check_same_settings(out_dir: Path, cfg: RunCfg) -> None:
    """``--resume`` continues a run with the settings it began with; other settings are refused, not recorded.

    Otherwise a finished 3-epoch run resumed with ``--epochs 5`` trains nothing yet records 5, and a run resumed
    with another seed or member count mixes two configurations in one model.
    """
    saved = _flat(read_json(out_dir / "train_config.json"))
    asked = _flat(json.loads(json.dumps(asdict(cfg))))  # as it would read back from disk (tuples become lists)
    changed = [key for key in sorted(saved.keys() & asked.keys())
               if saved[key] != asked[key] and key not in RESUME_MAY_CHANGE]
    if changed:
        listed = ", ".join(f"{key} {saved[key]!r} (asked {asked[key]!r})" for key in changed)
        raise SettingsChanged(f"{out_dir} was trained with {listed}; --resume continues a run with its own "
                              "settings. Repeat the run's original flags to continue it, or train with the new "
                              "settings into another --out (a finished run cannot be extended to more epochs)", listed)


def _flat(config: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _train_members(ensemble, runs, infos, train_cache, groups, val_cache, cfg: RunCfg, resume: bool, out_dir: Path,
                   deadline: float | None):
    """Each member's training state: one after another here, or side by side as Ray tasks (``engine="ray"``).

    Under a time budget (``deadline``, a ``time.perf_counter`` value), members one after another each get an equal
    share of the time left when they start; Ray tasks, which run side by side, each get all of it."""
    if cfg.engine == "ray":
        from enclip.train.ray_members import RayTrainCfg, train_members_ray

        yield from train_members_ray(ensemble, runs, infos, train_cache, groups, val_cache, cfg.train,
                                     out_dir / "ray-features", RayTrainCfg(address=cfg.ray_address),
                                     seconds=None if deadline is None else deadline - time.perf_counter())
        return
    for i, (run, info) in enumerate(zip(runs, infos)):
        log.info("training member %d of %d on %d items", i + 1, len(runs), len(run.rows))
        seconds = None if deadline is None else (deadline - time.perf_counter()) / (len(runs) - i)
        yield train_member(ensemble, i, train_cache, groups, val_cache, run, cfg.train, resume, info=info,
                           seconds=seconds)


def _caches(ensemble, catalogue, split, cache_dir: Path, cfg: RunCfg) -> tuple[FeatureCache, FeatureCache]:
    key = {"trunk": ensemble.trunk_fingerprint(), "heads": asdict(cfg.train.heads),
           "image_size": cfg.backbone.image_size, "views": cfg.train.views, "augment": asdict(cfg.train.augment),
           "captions": asdict(cfg.train.captions), "seed": cfg.train.seed, "data": catalogue.fingerprint()}
    if cfg.backbone.image_width is not None:  # absent for square inputs, so caches written before it stay valid
        key["image_width"] = cfg.backbone.image_width
    if not cfg.train.heads.colour:  # likewise absent without a colour branch
        del key["heads"]["colour"]
    if not cfg.train.heads.token_bag:  # likewise absent without a token bag (with one, the text outputs hold ids)
        del key["heads"]["token_bag"]
    del key["heads"]["text_adapter"]  # a head-side layer: the trunk outputs are the same with or without it
    key = json.loads(json.dumps(key))  # compare as it reads back from disk (tuples become lists)
    if (cache_dir / "cache_key.json").exists() and read_json(cache_dir / "cache_key.json") != key:
        raise EnclipError(f"the feature cache in {cache_dir} was built for another model, data or augmentation; "
                          "delete it or choose another cache directory")
    cache_dir.mkdir(parents=True, exist_ok=True)
    write_json(cache_dir / "cache_key.json", key)
    common = dict(augment=cfg.train.augment, captions=cfg.train.captions, seed=cfg.train.seed)
    clean = catalogue_image_features(ensemble, catalogue, Path(cfg.trunk_cache)) if cfg.trunk_cache else None
    train = cache_features(ensemble, catalogue, split["train"], cache_dir / "train", views=cfg.train.views,
                           clean=None if clean is None else clean[split["train"]], **common)
    val = cache_features(ensemble, catalogue, split["val"], cache_dir / "val", views=0,
                         clean=None if clean is None else clean[split["val"]], **common)
    return train, val
