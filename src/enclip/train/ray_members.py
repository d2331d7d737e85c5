"""Train ensemble members as Ray tasks: one task per member, side by side on a Ray cluster.

Each task runs the very :func:`enclip.train.trainer.train_member` the local engine runs, on a copy of the untrained
ensemble made by the driver (so every member starts from the weights the local run gives it) and on the trunk-feature
cache the driver computed or found in ``RunCfg.cache_dir``; that cache and the ensemble reach the tasks through Ray's
object store (shared memory on a node, copied once to each other node). A member seeds its own data order, views
and dropout, so the result equals the local run seed for seed. Members write their heads and checkpoints into the
run directory, which must therefore be on storage every node sees; a task lost with its node is retried by Ray and
resumes from the member's last checkpoint.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from enclip.models.ensemble import Ensemble
from enclip.ray_cluster import ray_session
from enclip.train.features import FeatureCache
from enclip.train.trainer import MemberRun, TrainCfg, train_member

log = logging.getLogger(__name__)


@dataclass
class RayTrainCfg:
    address: str | None = None  # Ray cluster to use (HOST:PORT of the head); None = a local cluster on 127.0.0.1
    cpus_per_member: float = 1.0  # CPUs each member's task reserves (and its torch threads)


def _train_one(ensemble: Ensemble, member: int, train: FeatureCache, groups: np.ndarray, val: FeatureCache,
               run: MemberRun, cfg: TrainCfg, info: dict, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    return train_member(ensemble, member, train, groups, val, run, cfg, resume=True, info=info)


def train_members_ray(ensemble: Ensemble, runs: list[MemberRun], infos: list[dict], train: FeatureCache,
                      groups: np.ndarray, val: FeatureCache, cfg: TrainCfg, ray_cfg: RayTrainCfg | None = None,
                      ) -> list[dict]:
    """Train every member of ``runs`` as a Ray task; load the trained heads into ``ensemble``; return each member's
    training state (its history), as the local loop does. Tasks always resume from a member's checkpoint when there
    is one, which is what makes a retried task cheap."""
    ray_cfg = ray_cfg or RayTrainCfg()
    threads = max(1, int(ray_cfg.cpus_per_member))
    with ray_session(ray_cfg.address) as ray:
        task = ray.remote(num_cpus=ray_cfg.cpus_per_member, max_retries=3)(_train_one)
        shared = [ray.put(obj) for obj in (ensemble, train, groups, val)]
        log.info("training %d members as Ray tasks (%s CPU each)", len(runs), ray_cfg.cpus_per_member)
        futures = [task.remote(shared[0], i, shared[1], shared[2], shared[3], run, cfg, infos[i], threads)
                   for i, run in enumerate(runs)]
        states = ray.get(futures)
    for i, run in enumerate(runs):
        ensemble.load_member(i, run.out_dir)
    return states
