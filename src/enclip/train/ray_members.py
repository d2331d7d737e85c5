"""Train ensemble members as Ray tasks: one task per member, side by side on a Ray cluster.

Each task runs the very :func:`enclip.train.trainer.train_member` the local engine runs, on a copy of the untrained
ensemble made by the driver (so every member starts from the weights the local run gives it; it travels through
Ray's object store) and on the trunk-feature cache the driver computed, which it publishes once as ``.npy`` files in
the run directory: every task memory-maps them from there, so the run directory must be on storage every node
sees, as it must anyway for the members' heads and checkpoints. A member seeds its own data order, views and
dropout, so the result equals the local run seed for seed. A task lost with its node is retried by Ray and resumes
from the member's last checkpoint.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from enclip.artifacts import atomic_file
from enclip.models.device import keep_freed_memory
from enclip.models.ensemble import Ensemble
from enclip.ray_cluster import ray_session
from enclip.train.features import FeatureCache
from enclip.train.trainer import MemberRun, TrainCfg, train_member

log = logging.getLogger(__name__)


@dataclass
class RayTrainCfg:
    address: str | None = None  # Ray cluster to use (HOST:PORT of the head); None = a local cluster on 127.0.0.1
    cpus_per_member: float = 1.0  # CPUs each member's task reserves (and its torch threads)


def publish(cache: FeatureCache, directory: Path) -> tuple[str, dict]:
    """Write every array of ``cache`` as a ``.npy`` file in ``directory``; returns what :func:`open_published`
    needs: the directory and each field's kind (None: an array; a length: a list; keys: a dict)."""
    directory.mkdir(parents=True, exist_ok=True)
    layout = {}
    for field in fields(cache):
        value = getattr(cache, field.name)
        if isinstance(value, list):
            layout[field.name], named = len(value), {f"{field.name}.{i}": v for i, v in enumerate(value)}
        elif isinstance(value, dict):
            layout[field.name], named = list(value), {f"{field.name}.{key}": v for key, v in value.items()}
        else:
            layout[field.name], named = None, {field.name: value}
        for name, array in named.items():
            with atomic_file(directory / f"{name}.npy") as handle:
                np.save(handle, np.asarray(array), allow_pickle=False)
    return str(directory), layout


def open_published(directory: str, layout: dict) -> FeatureCache:
    """The cache :func:`publish` wrote, memory-mapped (pages are read from the shared storage as training uses them)."""
    def load(name: str) -> np.ndarray:
        return np.load(Path(directory) / f"{name}.npy", mmap_mode="r", allow_pickle=False)

    values = {}
    for field, kind in layout.items():
        if isinstance(kind, int):
            values[field] = [load(f"{field}.{i}") for i in range(kind)]
        elif isinstance(kind, list):
            values[field] = {key: load(f"{field}.{key}") for key in kind}
        else:
            values[field] = load(field)
    return FeatureCache(**values)


def _train_one(ensemble: Ensemble, member: int, train: tuple[str, dict], groups: np.ndarray, val: tuple[str, dict],
               run: MemberRun, cfg: TrainCfg, info: dict, threads: int, seconds: float | None) -> dict:
    import torch

    torch.set_num_threads(threads)
    keep_freed_memory()  # a worker process is a fresh process: set it up as train_system does the driver
    return train_member(ensemble, member, open_published(*train), groups, open_published(*val), run, cfg,
                        resume=True, info=info, seconds=seconds)


def train_members_ray(ensemble: Ensemble, runs: list[MemberRun], infos: list[dict], train: FeatureCache,
                      groups: np.ndarray, val: FeatureCache, cfg: TrainCfg, shared_dir: Path,
                      ray_cfg: RayTrainCfg | None = None, seconds: float | None = None) -> list[dict]:
    """Train every member of ``runs`` as a Ray task; load the trained heads into ``ensemble``; return each member's
    training state (its history), as the local loop does. ``shared_dir`` (in the run directory) receives the
    published feature cache and is removed afterwards. Tasks always resume from a member's checkpoint when there is
    one, which is what makes a retried task cheap. ``seconds``: each member's time budget (they run side by side)."""
    ray_cfg = ray_cfg or RayTrainCfg()
    threads = max(1, int(ray_cfg.cpus_per_member))
    published = publish(train, shared_dir / "train"), publish(val, shared_dir / "val")
    with ray_session(ray_cfg.address) as ray:
        task = ray.remote(num_cpus=ray_cfg.cpus_per_member, max_retries=3)(_train_one)
        ensemble_ref, groups_ref = ray.put(ensemble), ray.put(groups)
        log.info("training %d members as Ray tasks (%s CPU each)", len(runs), ray_cfg.cpus_per_member)
        futures = [task.remote(ensemble_ref, i, published[0], groups_ref, published[1], run, cfg, infos[i], threads,
                               seconds)
                   for i, run in enumerate(runs)]
        states = ray.get(futures)
    shutil.rmtree(shared_dir, ignore_errors=True)
    for i, run in enumerate(runs):
        ensemble.load_member(i, run.out_dir)
    return states
