"""Contrastive fine-tuning of one ensemble member's heads on cached trunk features.

The loop: each step minimises the member's objective (train/objective.py: the pair loss, with items sharing a title
as positives of each other, and the attribute heads) with AdamW on the learning-rate schedule of train/schedule.py
(warm-up then cosine decay, in K cycles for a snapshot ensemble), in as many steps as a time budget's plan allows
(train/budget.py). Every epoch ends with an atomic checkpoint, and with validation recall and early stopping (under
a time budget, by default, only the last epoch and a snapshot ensemble's cycle ends are validated); a run
interrupted at any point resumes from the last finished epoch and ends with the same weights as an uninterrupted
one.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from enclip.artifacts import atomic_file
from enclip.data.captions import CaptionCfg
from enclip.data.degrade import AugmentCfg
from enclip.errors import EnclipError
from enclip.eval.evaluator import RetrievalEvaluator
from enclip.models.device import cpu_has_bfloat16_tiles
from enclip.models.ensemble import HEAD_CHUNK, Ensemble, HeadCfg
from enclip.train.alignment import cca_start
from enclip.train.budget import (
    REPLAN_AFTER,
    REPLAN_SKIP,
    StepPlan,
    full_plan,
    plan_steps,
    refit,
    replan,
    typical_validation,
)
from enclip.train.features import FeatureCache
from enclip.train.objective import Objective, build_objective
from enclip.train.schedule import cycle_ends, epochs_kept, lr_factor, settled_ends

log = logging.getLogger(__name__)


@dataclass
class TrainCfg:
    epochs: int = 3  # passes over a member's items (under a time budget: at most this many)
    batch_size: int = 256  # contrastive batch (the negatives each item sees)
    lr: float = 2e-3  # peak learning rate of new layers (projections, adapters) and the temperature
    # peak learning rate of unfrozen pretrained blocks: with two image stages trained, 3 epochs at 1e-3 beat 4 at 3e-4
    # on validation, and in 450 s 2e-3 and 3e-3 both beat 1e-3 (0.3045 against 0.2875) from a random start; from the
    # CCA start, 3e-3 beat 2e-3 in 420 s on validation (title R@10 +0.017 [+0.006, +0.028], shopper queries level),
    # and the same two models were level on test (+0.002 [-0.008, +0.013]; RESULTS.md, issue 14, twenty-sixth pass)
    block_lr: float = 3e-3
    weight_decay: float = 0.05  # AdamW decoupled weight decay (not applied to norms, biases, temperature)
    warmup: float = 0.05  # share of the steps spent warming up linearly
    # a snapshot ensemble's learning-rate cycles: each one's share of the plan's steps, rounded to epoch ends (empty:
    # even), and the peak learning-rate factor of every cycle after the first. A long first cycle and short, lower
    # restarts (e.g. 0.75 0.25 at 0.5) is the fast geometric ensembling of Garipov et al. (2018): one near-complete
    # model, and members that explore around it (RESULTS.md, issue 14, fourteenth pass)
    cycle_shares: tuple[float, ...] = ()
    restart_lr: float = 1.0
    heads: HeadCfg = field(default_factory=HeadCfg)  # what is trained
    views: int = 1  # degraded views cached per training image, beside the clean one
    # share of a step's items shown in a degraded view (the rest clean); None: each cached view equally likely (with
    # one degraded view, half)
    degraded_share: float | None = None
    augment: AugmentCfg = field(default_factory=AugmentCfg)  # how degraded views are drawn
    captions: CaptionCfg = field(default_factory=CaptionCfg)  # training texts per item
    patience: int = 2  # epochs without validation gain before stopping
    # when validation recall is measured: "every" epoch (early stopping, the best epoch kept), or only at the "last"
    # (and at a snapshot ensemble's cycle ends; the last epoch of a cosine schedule is the one kept). "auto": last
    # under a time budget, where a validation costs some 15 steps (RESULTS.md, issue 14, thirteenth pass), else every
    validate: str = "auto"
    val_items: int = 2000  # validation items scored each epoch (seeded sample; 0 = all)
    val_distractors: int = 20000  # training images added to the validation gallery (0 = validation images only)
    seed: int = 0  # seeds data order, views, dropout
    # batches drawn within one of this many k-means clusters of the train images, so the negatives an item meets
    # look alike (hard negatives; a reading of the paper's clustering that serves every member); 0 = random batches
    batch_clusters: int = 0
    # the contrastive loss over a batch's photo-caption pairs: "softmax", CLIP's symmetric cross-entropy over each row
    # and column, or "sigmoid", SigLIP's independent binary loss per pair with a learned bias (Zhai et al. 2023,
    # "Sigmoid loss for language image pre-training"), reported better than softmax at small batches
    loss: str = "softmax"
    # the temperature a member's contrastive loss starts from, learned from there (None: the backbone's own, CLIP's
    # 0.07 for new projections). It moves about one learning rate's worth in log space a step, so a budget's few
    # hundred steps leave it near where it started
    temperature: float | None = None
    # attribute columns both embeddings learn to classify (columns the catalogue lacks are skipped)
    aux_columns: tuple[str, ...] = ("gender", "articleType", "baseColour", "usage", "season")
    aux_weight: float = 0.5  # weight of those auxiliary classification losses beside the contrastive loss (0 = off)
    # their class vectors: "names", the member's text embedding of each class value ("Navy Blue"), which also teaches
    # the text head attribute words (validation title R@10 0.281 -> 0.294, attrs2img P@10 0.534 -> 0.579; RESULTS.md,
    # issue 14); or "learned", free vectors that teach the photo side only
    aux_prototypes: str = "names"
    # also the other direction for photos: each class in the batch ranks the batch's photos, its own photos first
    # (a multi-positive softmax over photos), which is what a bare attribute query ("Navy Blue") asks of the index.
    # The default direction classifies each photo among the classes, which ranks classes, not photos. On validation
    # (3 epochs) one-word attribute queries gain (attr2img P@10 colour 0.46 -> 0.56, type 0.49 -> 0.57) and titles
    # lose (R@10 0.307 -> 0.291, both2img 0.825 -> 0.805; at weight 0.5): off, a choice for shops searched mostly
    # by attribute. The value is the term's weight beside each classification direction's 0.5 (0 = off)
    aux_rank_photos: float = 0.0
    # share of training items whose photo is mirrored left to right in a step: the cached trunk feature map is
    # flipped, so the view costs no trunk pass. Level on validation at 0.5 (title R@10 0.306 -> 0.3105, both2img
    # 0.823 -> 0.820, 3 epochs; RESULTS.md, issue 14, eleventh pass): off (0)
    mirror: float = 0.0
    # keep the image head's depthwise convolution weights as pretrained (4% of its weights): their weight gradient is
    # most of a depthwise layer's backward pass on the CPU, so steps are 7-14% cheaper, but validation R@10 moved
    # +0.006 and -0.014 in two pairs of runs, and the demo stayed over budget: off (RESULTS.md, issue 14)
    frozen_depthwise: bool = False
    # run the image head's batch norms on their pretrained statistics while training, as at query time (their scale
    # and shift still train); their backward pass is then an elementwise product (validation R@10 0.278 against
    # 0.282, slower in early epochs: off)
    frozen_norms: bool = False
    device: str = "auto"  # "auto", "cpu", "cuda"
    amp: bool = True  # bfloat16 autocast on CUDA (the whole step)
    # on a CPU with bfloat16 tiles (AMX), run the text head under bfloat16 autocast (losses stay float32). A step was
    # 26% cheaper in one bench/step_cost.py run and level in the next; real epochs were level (172 s against 175 s)
    # and so was validation recall (0.292 against 0.290; RESULTS.md, issue 14, fifth pass): off until it pays. The
    # image head is three times slower in bfloat16 (depthwise convolutions), so it always stays float32 on the CPU.
    cpu_amp: bool = False
    # run the image head's training steps through torch.compile (TorchInductor fuses its batch-norm and activation
    # passes, forward and backward): "auto" compiles when a member trains COMPILE_MIN_STEPS steps or more (never under
    # a time budget, whose plan has no room for the compile); "on",
    # "off". In `make demo` on 2 cores, compiling cost about 64 s (a cold compiler cache) and saved about 22 s an
    # epoch of 138 steps, so the demo's 3 epochs break even and run eagerly (RESULTS.md, issue 14, seventh pass).
    # Only training steps are compiled; saved weights and query-time encoders are the same modules either way.
    compile: str = "auto"
    # how a member's new projections start: "cca", fitted in closed form to the training pairs before the first step
    # (train/alignment.py), or "random". In the same 420 s on validation, all 4,421 titles against the catalogue: title
    # R@10 0.259 -> 0.283, both2img 0.933 -> 0.972, with 637 steps against 760 (RESULTS.md, issue 14, twenty-third
    # pass). Projections a backbone brings pretrained (a real CLIP's) are kept either way. Independent members
    # (strategy seeds) then share one start and differ by data order and views only
    projection_init: str = "cca"


COMPILE_MODES = ("auto", "on", "off")
VALIDATE_MODES = ("auto", "every", "last")
COMPILE_MIN_STEPS = 600  # "auto" compiles from here on, where the compiled steps repay the compile time


def training_image_encoder(head: nn.Module, mode: str, steps: int):
    """What training steps call for ``Member.encode_image``: the same head, compiled when ``mode`` says so.

    The compiled module shares the head's parameters, so the optimiser, checkpoints and saved members see one set of
    weights. Under "auto", a compiler that fails (no C++ toolchain, an unsupported device) is logged and the steps
    run eagerly; under "on" its error is raised.
    """
    if mode not in COMPILE_MODES:
        raise EnclipError(f"unknown compile mode {mode!r}; choose one of {', '.join(COMPILE_MODES)}")
    if mode == "off" or (mode == "auto" and steps < COMPILE_MIN_STEPS):
        return lambda features: F.normalize(head(features).float(), dim=-1)
    forward = {"call": torch.compile(head)}

    def encode(features: torch.Tensor) -> torch.Tensor:
        try:
            out = forward["call"](features)
        except Exception as error:  # compiler failures surface at the first call
            if mode == "on" or forward["call"] is head:
                raise
            log.warning("torch.compile of the image head failed (%s: %s); training it eagerly",
                        type(error).__name__, error)
            forward["call"] = head
            out = head(features)
        return F.normalize(out.float(), dim=-1)

    return encode


def member_objective(ensemble: Ensemble, member, train: FeatureCache, cfg: TrainCfg, seed: int) -> Objective:
    """The objective ``cfg`` asks for: its pair loss and, when on, its attribute heads."""
    return build_objective(ensemble, member, train, seed, cfg.loss, cfg.aux_columns, cfg.aux_weight,
                           cfg.aux_prototypes, cfg.aux_rank_photos)


def depthwise_weights(head: nn.Module) -> list[nn.Parameter]:
    """The weights of a head's depthwise convolutions (one filter per channel)."""
    return [module.weight for module in head.modules() if isinstance(module, nn.Conv2d)
            and module.groups > 1 and module.groups == module.in_channels == module.out_channels]


def _param_groups(member: torch.nn.Module, cfg: TrainCfg) -> list[dict]:
    new, blocks, no_decay = [], [], []
    for name, param in member.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim < 2 or name == "logit_scale":
            no_decay.append(param)
        elif "projection" in name or "adapter" in name or "token_bag" in name or name.endswith("proj.weight"):
            new.append(param)
        else:
            blocks.append(param)
    return [
        {"params": new, "lr": cfg.lr, "weight_decay": cfg.weight_decay},
        {"params": blocks, "lr": cfg.block_lr, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "lr": cfg.lr, "weight_decay": 0.0},
    ]


@dataclass
class MemberRun:
    """What one member trains on."""

    rows: np.ndarray  # rows of the training FeatureCache this member sees
    seed: int  # member seed (data order, views, dropout)
    out_dir: Path  # member model directory (and its training checkpoint)
    groups_of_rows: np.ndarray | None = None  # optional cluster id per row: batches drawn within one group
    # snapshot ensembles: one model directory per learning-rate cycle, where the weights at the cycle's end are
    # saved (one trajectory, K members); empty: one cycle, and the best epoch is saved to ``out_dir``
    snapshots: tuple[Path, ...] = ()

    @property
    def model_dirs(self) -> tuple[Path, ...]:
        """Where this run's trained weights are saved (the last one is what the member holds afterwards)."""
        return self.snapshots or (self.out_dir,)


def _epoch_batches(run: MemberRun, epoch: int, batch_size: int, lengths: np.ndarray | None = None) -> list[np.ndarray]:
    """This epoch's batches of cache rows: shuffled, or drawn within one cluster when the run has groups.

    With ``lengths`` (caption tokens per row), rows are sorted by length inside windows of 8 batches before
    batching: the text head then pads each batch to nearly its mean length instead of its longest title, which
    roughly halves its cost, while batch composition stays random across windows.
    """
    rng = np.random.default_rng([run.seed, epoch, 1])
    order = rng.permutation(run.rows)
    pools = [order] if run.groups_of_rows is None else [
        order[run.groups_of_rows[order] == g] for g in np.unique(run.groups_of_rows[run.rows])]
    batches = []
    for pool in pools:
        if lengths is not None:
            window = 8 * batch_size
            pool = np.concatenate([w[np.argsort(lengths[w], kind="stable")]
                                   for w in np.split(pool, range(window, len(pool), window))]) if len(pool) else pool
        stop = len(pool) - batch_size + 1 if run.groups_of_rows is None else len(pool) - batch_size // 2
        batches += [pool[i : i + batch_size] for i in range(0, max(stop, 0), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))] or [order]


def train_member(
    ensemble: Ensemble,
    member: int,
    train: FeatureCache,
    groups: np.ndarray,
    val: FeatureCache,
    run: MemberRun,
    cfg: TrainCfg,
    resume: bool = True,
    info: dict | None = None,
    seconds: float | None = None,
) -> dict:
    """Train member number ``member`` (its heads) on ``run.rows`` of ``train``; returns the training history.

    ``seconds``: this member's share of a time budget; the steps are then planned to end within it (at most
    ``cfg.epochs`` epochs), from this machine's measured cost of a step and of a validation.
    """
    return _MemberTraining(ensemble, member, train, groups, val, run, cfg, info, seconds).fit(resume)


class _Schedule:
    """A member's step plan and what is laid over it: the learning-rate factor of every step, and the epochs whose
    ends are snapshot members (a snapshot ensemble's cycle ends; none for one model)."""

    def __init__(self, plan: StepPlan, optimizer, cfg: TrainCfg, cycles: int, snapshots: bool,
                 ends: Sequence[int] | None = None):
        self.cfg, self.cycles, self.snapshots = cfg, cycles, snapshots
        self.plan = plan
        factor, self.snapshot_epochs = self._laid_over(plan, ends)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    def _laid_over(self, plan: StepPlan, ends: Sequence[int] | None = None):
        """The learning-rate factor per step over ``plan``, and the snapshot epochs (``ends``, or as the plan splits
        its steps into cycles)."""
        if ends is None:
            ends = cycle_ends(plan.epochs, self.cycles, self.cfg.cycle_shares, plan.steps / plan.steps_per_epoch)
        ends = list(ends) if self.snapshots else [plan.epochs]
        factor = lr_factor(plan.steps_per_epoch, plan.epochs, self.cfg.warmup, steps=plan.steps,
                           restart_lr=self.cfg.restart_lr, ends=ends)
        return factor, ends if self.snapshots else []

    def adopt(self, plan: StepPlan, epochs_done: int) -> None:
        """Train to ``plan`` from here on: the schedule laid over it anew, and the snapshot epochs too, except those
        already passed or under way (settled_ends)."""
        self.plan = plan
        ends = cycle_ends(plan.epochs, self.cycles, self.cfg.cycle_shares, plan.steps / plan.steps_per_epoch)
        factor, self.snapshot_epochs = self._laid_over(plan, settled_ends(self.snapshot_epochs, ends, epochs_done))
        self.scheduler.lr_lambdas = [factor] * len(self.scheduler.optimizer.param_groups)


class _MemberTraining:
    """One member's training run: its objective, optimiser and schedule, and what starts, steps, ends and saves its
    epochs. ``state`` (epoch, history, best recall, the plan and cycle ends) is what the checkpoint keeps."""

    def __init__(self, ensemble: Ensemble, member: int, train: FeatureCache, groups: np.ndarray, val: FeatureCache,
                 run: MemberRun, cfg: TrainCfg, info: dict | None, seconds: float | None):
        self.started = time.perf_counter()
        self.ensemble, self.member, self.train, self.val, self.run, self.cfg = ensemble, member, train, val, run, cfg
        self.info, self.seconds = info or {}, seconds
        self.heads = ensemble.members[member]
        self.device = ensemble.device
        self.objective = member_objective(ensemble, self.heads, train, cfg, run.seed)
        if cfg.temperature is not None:  # a resumed run loads its own over it
            with torch.no_grad():
                self.heads.logit_scale.fill_(math.log(1.0 / cfg.temperature))
        if cfg.frozen_depthwise:
            for weight in depthwise_weights(self.heads.image_head):
                weight.requires_grad_(False)
        groups_of_params = _param_groups(self.heads, cfg)
        if self.objective.parameters():
            groups_of_params.append({"params": self.objective.parameters(), "lr": cfg.lr, "weight_decay": 0.0})
        self.optimizer = torch.optim.AdamW(groups_of_params)
        self.val_rows = _val_sample(val, cfg)
        self.distractors = (train, _distractor_rows(train, cfg)) if cfg.val_distractors else None
        self.groups = torch.from_numpy(groups)
        # what a validation embeds
        self.val_images = len(self.val_rows) + (0 if self.distractors is None else len(self.distractors[1]))
        self.cycles = max(1, len(run.snapshots))
        self.step_times: list[float] = []  # the first epoch's steps, until the plan is made again from them

    @property
    def plan(self) -> StepPlan:
        return self.schedule.plan

    def fit(self, resume: bool) -> dict:
        """Train from the start, or from the checkpoint's last epoch (``resume``), to the plan's end or an early stop;
        returns the state (with the history). The member's saved weights are then loaded into the ensemble."""
        run, cfg = self.run, self.cfg
        checkpoint = run.out_dir / "checkpoint.pt"
        run.out_dir.mkdir(parents=True, exist_ok=True)
        saved = None
        if resume and checkpoint.exists():
            saved = torch.load(checkpoint, map_location=self.device, weights_only=False)
        if saved is None:
            self._start_projections()
        plan = StepPlan(**saved["state"]["plan"]) if saved is not None and "plan" in saved["state"] else \
            self._first_plan()
        log.info("member %d: %s", self.member, plan.describe())
        if run.snapshots and plan.epochs < self.cycles:
            raise EnclipError(f"the time budget affords {plan.describe()}; a snapshot ensemble of {self.cycles} "
                              "members needs an epoch per member: raise --time-budget or lower --members")
        # a resumed run keeps the cycle ends it had (a cut may have settled them off the plan's own split)
        self.schedule = _Schedule(plan, self.optimizer, cfg, self.cycles, bool(run.snapshots),
                                  saved["state"].get("cycle_ends") if saved is not None else None)
        self.state = {"epoch": 0, "best": -1.0, "bad_epochs": 0, "history": [], "done": False}
        if saved is not None:
            self.heads.load_state_dict(saved["member"])
            self.objective.load_state_dict(saved)
            self.optimizer.load_state_dict(saved["optimizer"])
            self.schedule.scheduler.load_state_dict(saved["scheduler"])
            self.state = saved["state"]
            log.info("member %d: resuming after epoch %d", self.member, self.state["epoch"])
        self.state.update(plan=plan.to_dict(), cycle_ends=list(self.schedule.snapshot_epochs))
        if self.state["done"]:
            self.ensemble.load_member(self.member, run.model_dirs[-1])
            return self.state
        # a budget's plan was timed on eager steps and has no room for a compile: "auto" then runs eagerly
        compile_mode = "off" if plan.seconds is not None and cfg.compile == "auto" else cfg.compile
        encode_image = training_image_encoder(self.heads.image_head, compile_mode, plan.steps)
        while self.state["epoch"] < self.plan.epochs and not self.state["done"]:
            self._epoch(encode_image)
            _save_checkpoint(checkpoint, self.heads, self.optimizer, self.schedule.scheduler, self.state,
                             self.objective)
        # against the share this call was given: the plan's own seconds leave out what its probe took of it
        took = time.perf_counter() - self.started
        if self.seconds is not None and took > self.seconds:
            log.warning("member %d took %.0f s of its %.0f s share of the time budget: its steps ran slower than "
                        "planned (%.2f s); a few steps fewer next time, or a larger --time-budget", self.member, took,
                        self.seconds, self.plan.step_seconds)
        self.ensemble.load_member(self.member, run.model_dirs[-1])
        return self.state

    def _start_projections(self) -> None:
        """A fresh run's new projections as ``cfg.projection_init`` asks (pretrained ones are kept)."""
        if self.cfg.projection_init == "cca" and self.ensemble.backbone.new_projections:
            cca_start(self.heads, self.train, self.run.rows, self.device)

    def _first_plan(self) -> StepPlan:
        """Every epoch in full, or under what is left of the member's share of a budget the most steps that fit at
        the costs of a step and a validation timed here."""
        batches = _epoch_batches(self.run, 0, self.cfg.batch_size, self.train.title_lengths())
        seconds = None if self.seconds is None else self.seconds - (time.perf_counter() - self.started)
        return _plan(self.heads, self.objective, self.train, self.groups, batches, self.cfg, self.device,
                     self.val_images, len(self.val_rows), seconds,
                     _validations(self.cfg, self.cycles, self.seconds is not None))

    def _epoch(self, encode_image) -> None:
        """One epoch's steps, its validation when the plan has one there, the plan fitted to the time left, and the
        epoch kept: in the history, and as a snapshot member or the best epoch."""
        state, plan = self.state, self.plan
        epoch, started = state["epoch"], time.perf_counter()
        torch.manual_seed(int(np.random.default_rng([self.run.seed, epoch, 2]).integers(2**31)))
        loss, steps = _run_epoch(self.ensemble, self.heads, encode_image, self.train, self.groups, self.run, epoch,
                                 self.optimizer, self.schedule.scheduler, self.cfg, self.member, self.objective,
                                 plan.steps_in_epoch(epoch), self._after_step if epoch == 0 else None)
        plan = self.plan  # the first epoch may have planned again
        steps_seconds = time.perf_counter() - started
        every = plan.validations is None
        recall, validation_seconds = None, None
        if every or epoch + 1 in (plan.epochs, *self.schedule.snapshot_epochs):
            recall, validation_seconds = self._validate()
        state["epoch"] = epoch + 1
        self._refit(epoch, started, steps_seconds, validation_seconds, every)
        if recall is None and state["epoch"] >= self.plan.epochs:  # the cut ended the plan here: its one validation
            recall, validation_seconds = self._validate()
        state["history"].append({"epoch": epoch + 1, "loss": loss, "val_R@10": recall, "steps": steps,
                                 "seconds": round(time.perf_counter() - started, 2),  # the epoch and its validation
                                 "validation_seconds": validation_seconds})
        if recall is None:  # an epoch inside a plan that validates at its end: the checkpoint alone is written
            log.info("member %d epoch %d: loss %.4f", self.member, epoch + 1, loss)
            return
        self._keep(epoch + 1, recall)
        log.info("member %d epoch %d: loss %.4f, val R@10 %.4f", self.member, epoch + 1, loss, recall)

    def _refit(self, epoch: int, started: float, steps_seconds: float, validation_seconds: float | None,
               every: bool) -> None:
        """At the end of ``epoch`` (0-based), fit the plan to what is left of the member's time (budget.refit)."""
        state, plan, snapshot_epochs = self.state, self.plan, self.schedule.snapshot_epochs
        done_steps = sum(plan.steps_in_epoch(e) for e in range(epoch + 1))
        timed = [entry.get("validation_seconds") for entry in state["history"]] + [validation_seconds]
        pending = None if every else len({e for e in snapshot_epochs if e > epoch + 1} | {plan.epochs})
        # the steps' own seconds so far: each epoch's less its validation (its replanning at step 24 counted in)
        run_steps_seconds = steps_seconds + sum(entry["seconds"] - (entry.get("validation_seconds") or 0.0)
                                                for entry in state["history"])
        fitted = refit(plan, sum(entry["seconds"] for entry in state["history"]) + time.perf_counter() - started,
                       steps_seconds / plan.steps_in_epoch(epoch), typical_validation(timed, plan.validation_seconds),
                       done_steps, min_epochs=epochs_kept(epoch + 1, snapshot_epochs), validations=pending,
                       max_epochs=self.cfg.epochs, run_step_seconds=run_steps_seconds / done_steps)
        if fitted is not plan:
            self._adopt(fitted, f"{'cut to' if fitted.steps < plan.steps else 'lengthened to'} what fits after epoch "
                                f"{epoch + 1}")

    def _keep(self, epochs_done: int, recall: float) -> None:
        """A validated epoch: a snapshot member at a cycle's end (every one, whatever its score: no best epoch, no
        early stop), or for one model the best epoch so far saved, and early stopping counted."""
        state, run = self.state, self.run
        if run.snapshots:
            if epochs_done in self.schedule.snapshot_epochs:
                cycle = self.schedule.snapshot_epochs.index(epochs_done)
                self.ensemble.save_member(self.member, run.snapshots[cycle], **{**self.info, "member": cycle},
                                          val_recall_at_10=recall, epoch=epochs_done)
            state["done"] = state["epoch"] >= self.plan.epochs
            return
        if recall > state["best"]:
            state["best"], state["bad_epochs"] = recall, 0
            self.ensemble.save_member(self.member, run.out_dir, **self.info, best_val_recall_at_10=recall,
                                      epoch=epochs_done)
        else:
            state["bad_epochs"] += 1
        state["done"] = state["bad_epochs"] >= self.cfg.patience or state["epoch"] >= self.plan.epochs

    def _adopt(self, plan: StepPlan, why: str) -> None:
        """Train to ``plan`` from here on, and save it (with the cycle ends laid over it) in the state."""
        old = self.plan.steps
        self.schedule.adopt(plan, self.state["epoch"])
        self.state.update(plan=plan.to_dict(), cycle_ends=list(self.schedule.snapshot_epochs))
        log.info("member %d: %s: %s (it had %d steps)", self.member, why, plan.describe(), old)

    def _after_step(self, done: int, seconds: float) -> int | None:
        """Once the member has timed its own first REPLAN_AFTER steps, plan again from them and from a validation
        timed again in this warm process; returns the steps the first epoch now runs."""
        self.step_times.append(seconds)
        plan = self.plan
        if done != REPLAN_AFTER or plan.seconds is None or plan.measured_steps:
            return None
        validation = _validation_seconds(self.heads, self.train, self.cfg, self.device, self.val_images,
                                         len(self.val_rows))
        self._adopt(replan(plan, float(np.mean(self.step_times[REPLAN_SKIP:])), done, self.cfg.epochs, self.cycles,
                           validation), "planned again from its own steps")
        return self.plan.steps_in_epoch(0)

    def _validate(self) -> tuple[float, float]:
        """Validation recall of the member as it is now, and the seconds it took."""
        began = time.perf_counter()
        recall = validation_recall(self.ensemble, self.member, self.val, self.val_rows, distractors=self.distractors)
        return recall, round(time.perf_counter() - began, 4)


def _run_epoch(ensemble, heads, encode_image, train, groups, run, epoch, optimizer, scheduler, cfg, member,
               objective: Objective, steps: int, after_step=None) -> tuple[float, int]:
    """One pass over ``steps`` of the epoch's batches (fewer than all in a time budget's last epoch); returns the
    mean loss and the steps run. ``after_step(steps done, its seconds)`` may return a new step count for the epoch
    (a budget planned again)."""
    rng = np.random.default_rng([run.seed, epoch, 3])
    device = ensemble.device
    batches = _epoch_batches(run, epoch, cfg.batch_size, train.title_lengths())
    ensemble.train()
    _freeze_norms(heads, cfg)
    losses = []
    started = time.perf_counter()
    with tqdm(total=min(steps, len(batches)), desc=f"member {member} epoch {epoch + 1}", unit="batch",
              leave=False) as bar:
        for rows in batches:
            if len(losses) >= steps:
                break
            step_started = time.perf_counter()
            losses.append(_step(heads, encode_image, train, groups, rows, rng, optimizer, cfg, device, objective))
            scheduler.step()
            if after_step is not None:
                steps = after_step(len(losses), time.perf_counter() - step_started) or steps
                bar.total = min(steps, len(batches))
            rate = len(losses) * cfg.batch_size / (time.perf_counter() - started)
            bar.update()
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", items_per_s=f"{rate:.0f}")
    ensemble.eval()
    return float(np.mean(losses)), len(losses)


def _freeze_norms(heads, cfg: TrainCfg) -> None:
    if cfg.frozen_norms:
        for module in heads.image_head.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()


def _step(heads, encode_image, train, groups, rows, rng, optimizer, cfg: TrainCfg, device,
          objective: Objective) -> float:
    """One optimiser step on the batch ``rows`` (a degraded or clean view and a caption drawn per item)."""
    if cfg.degraded_share is None:
        views = rng.integers(0, len(train.images), size=len(rows))
    else:  # view 0 is the clean photo
        degraded = rng.random(len(rows)) < cfg.degraded_share
        views = np.where(degraded, rng.integers(1, max(2, len(train.images)), size=len(rows)), 0)
    captions = _pick_captions(train, rows, rng)
    mirrored = rng.random(len(rows)) < cfg.mirror if cfg.mirror else None
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.amp and device.type == "cuda")
    text_bfloat16 = cfg.cpu_amp and device.type == "cpu" and cpu_has_bfloat16_tiles()
    with autocast:
        image = encode_image(train.image_batch(rows, views, device, mirrored))
        text = heads.encode_text(train.text_batch(captions, device), bfloat16=text_bfloat16)
        loss = objective.pair(image, text, heads.logit_scale, groups[rows].to(device))
        if objective.aux is not None:
            picked = torch.from_numpy(rows).to(device)
            labels = {name: values[picked] for name, values in objective.labels.items()}
            loss = loss + cfg.aux_weight * objective.aux.loss(image, text, labels, heads, text_bfloat16)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def _validations(cfg: TrainCfg, cycles: int, budgeted: bool) -> int | None:
    """Validations a member's plan pays for in all (one per learning-rate cycle's end), or None for one every epoch
    (``cfg.validate``; "auto" validates at the end only under a time budget)."""
    if cfg.validate not in VALIDATE_MODES:
        raise EnclipError(f"unknown --validate {cfg.validate!r}; choose one of {', '.join(VALIDATE_MODES)}")
    return None if cfg.validate == "every" or (cfg.validate == "auto" and not budgeted) else cycles


def _plan(heads, objective: Objective, train, groups, batches, cfg: TrainCfg, device, val_images: int, val_texts: int,
          seconds: float | None, validations: int | None) -> StepPlan:
    """Every epoch in full, or under a budget of ``seconds`` the most steps that fit at this machine's costs."""
    if seconds is None:
        return full_plan(cfg.epochs, len(batches), validations)
    started = time.perf_counter()
    step_seconds, validation_seconds = _measure_costs(heads, objective, train, groups, batches, cfg, device,
                                                      val_images, val_texts)
    return plan_steps(seconds - (time.perf_counter() - started), step_seconds, validation_seconds, len(batches),
                      cfg.epochs, validations)


# training steps timed to plan a budget, after one that warms allocators up and is not counted: the same step took
# 0.6-1.5 s on the 2-core machine (RESULTS.md, issue 14, eighth pass), so a mean of 4 misjudged runs by up to 13%
PROBE_STEPS = 8


def _probe_batches(batches: list[np.ndarray], lengths: np.ndarray | None) -> list[np.ndarray]:
    """A warm-up batch, then PROBE_STEPS batches whose longest title sits at evenly spaced quantiles of the epoch's:
    the text head pays for each batch's longest title."""
    order = (np.arange(len(batches)) if lengths is None else
             np.argsort([lengths[rows].max() for rows in batches], kind="stable"))
    picks = [int(order[int((q + 0.5) * len(order) / PROBE_STEPS)]) for q in range(PROBE_STEPS)]
    return [batches[picks[PROBE_STEPS // 2]]] + [batches[i] for i in picks]


def _measure_costs(heads, objective: Objective, train, groups, batches, cfg: TrainCfg, device, val_images: int,
                   val_texts: int) -> tuple[float, float]:
    """Seconds of one training step and of one end-of-epoch validation on this machine, timed on throwaway copies
    of the heads (the member's weights, and the random streams training draws from, are left as they were)."""
    probe = copy.deepcopy(heads)
    objective = Objective(copy.deepcopy(objective.pair), copy.deepcopy(objective.aux), objective.labels)
    params = [p for p in probe.parameters() if p.requires_grad] + objective.parameters()
    optimizer = torch.optim.AdamW(params, lr=0.0)
    encode_image = training_image_encoder(probe.image_head, "off", 0)
    rng = np.random.default_rng(0)
    picks = _probe_batches(batches, train.title_lengths())
    probe.train()
    _freeze_norms(probe, cfg)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        times = []
        for rows in picks:
            started = time.perf_counter()
            _step(probe, encode_image, train, groups, rows, rng, optimizer, cfg, device, objective)
            times.append(time.perf_counter() - started)
    return float(np.mean(times[1:])), _validation_seconds(probe, train, cfg, device, val_images, val_texts)


def _validation_seconds(member, train: FeatureCache, cfg: TrainCfg, device, val_images: int, val_texts: int) -> float:
    """Seconds an end-of-epoch validation of ``val_images`` photos and ``val_texts`` titles takes, extrapolated from
    embedding two chunks of ``train``'s items after one untimed chunk: a process's first chunk pays for allocations
    that a validation pays once. The member is left in training mode, its weights and batch-norm statistics as they
    were."""
    rows = np.arange(min(len(train), 3 * HEAD_CHUNK))
    member.eval()
    with torch.no_grad():
        _embed_images(member, train, rows[:HEAD_CHUNK], device)
        timed = rows[HEAD_CHUNK:] if len(rows) > HEAD_CHUNK else rows
        started = time.perf_counter()
        _embed_images(member, train, timed, device)
        image_seconds = (time.perf_counter() - started) / len(timed)
        started = time.perf_counter()
        member.encode_text(train.text_batch(train.first_caption[timed], device))
        text_seconds = (time.perf_counter() - started) / len(timed)
    member.train()
    _freeze_norms(member, cfg)
    return val_images * image_seconds + val_texts * text_seconds


def _pick_captions(cache: FeatureCache, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    first = cache.first_caption[rows]
    last = np.append(cache.first_caption, len(cache.caption_owner))[rows + 1]
    return first + (rng.random(len(rows)) * (last - first)).astype(np.int64)


def _distractor_rows(train: FeatureCache, cfg: TrainCfg) -> np.ndarray:
    rows = np.arange(len(train))
    if len(rows) > cfg.val_distractors:
        rows = np.sort(np.random.default_rng([cfg.seed, 3]).choice(rows, cfg.val_distractors, replace=False))
    return rows


def _val_sample(val: FeatureCache, cfg: TrainCfg) -> np.ndarray:
    rows = np.arange(len(val))
    if cfg.val_items and len(rows) > cfg.val_items:
        rows = np.sort(np.random.default_rng(cfg.seed).choice(rows, cfg.val_items, replace=False))
    return rows


@torch.no_grad()
def _embed_images(member, cache: FeatureCache, rows: np.ndarray, device) -> torch.Tensor:
    chunks = [rows[i : i + HEAD_CHUNK] for i in range(0, len(rows), HEAD_CHUNK)]
    return torch.cat([member.encode_image(cache.image_batch(chunk, np.zeros(len(chunk), int), device))
                      for chunk in chunks])


@torch.no_grad()
def validation_recall(ensemble: Ensemble, member: int, val: FeatureCache, rows: np.ndarray, k: int = 10,
                      distractors: tuple[FeatureCache, np.ndarray] | None = None) -> float:
    """Title → image recall@k of validation items, each title's own item being the one relevant, judged by the
    evaluator ``enclip eval`` uses.

    The gallery holds the validation images plus ``distractors`` (training images): as in the real search, a
    held-out title must beat the training items the model has learnt, not only other unseen ones.
    """
    heads = ensemble.members[member]
    device = ensemble.device
    images = _embed_images(heads, val, rows, device)
    texts = torch.cat([heads.encode_text(val.text_batch(val.first_caption[rows[i : i + 512]], device))
                       for i in range(0, len(rows), 512)])
    best_scores, best = (texts @ images.T).topk(min(k, len(rows)), dim=1)  # gallery rows 0..n-1: validation items
    if distractors is not None:
        cache, distractor_rows = distractors
        for start in range(0, len(distractor_rows), 4096):
            gallery = _embed_images(heads, cache, distractor_rows[start : start + 4096], device)
            scores, found = (texts @ gallery.T).topk(min(k, len(gallery)), dim=1)
            merged_scores = torch.cat([best_scores, scores], dim=1)
            merged = torch.cat([best, found + len(rows) + start], dim=1)  # distractors after the validation rows
            best_scores, keep = merged_scores.topk(min(k, merged.shape[1]), dim=1)
            best = merged.gather(1, keep)
    evaluator = RetrievalEvaluator([(i,) for i in range(len(rows))], (f"R@{k}",), f"R@{k}")
    return evaluator.primary_score(best.tolist())


def _save_checkpoint(path: Path, member, optimizer, scheduler, state: dict, objective: Objective) -> None:
    with atomic_file(path) as handle:
        torch.save({"member": member.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "state": state, **objective.state_dict()}, handle)
