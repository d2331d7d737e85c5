"""Quality benchmark: single models against ENCLIP ensembles and their ablations, in one run, on the same data.

Every system trains from one shared trunk-feature cache (so no system pays for or benefits from caching) and is
indexed over the whole catalogue from one shared catalogue trunk cache. Settings are chosen on the validation
split; the test split is only scored. Per-query values are kept so that differences get paired bootstrap intervals.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from enclip.data.catalogue import Catalogue
from enclip.data.split import split_indices
from enclip.eval.bootstrap import paired_bootstrap_diff
from enclip.eval.evaluate import EvalCfg, evaluate_index
from enclip.indexing import IndexBuildCfg, build_index, write_index
from enclip.models.registry import BackboneCfg
from enclip.search import FUSION_RULES, SearchCfg, Searcher
from enclip.train.run import EnsembleCfg, RunCfg, train_system
from enclip.train.trainer import TrainCfg
from enclip.vectors import IndexCfg

log = logging.getLogger("bench.quality")


@dataclass
class BenchCfg:
    members: int = 5  # ensemble size K
    epochs: int = 2  # epochs of one member (the "one member budget"; 2 keeps the full suite within 3 h on 2 cores)
    train_share: float = 1.0  # share of the train split the benchmark trains on at all (quick mode: less)
    fractions: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1.0)  # limited-data sweep (of the used train items)
    max_queries: int | None = None  # test title queries (None = all 4,443)
    lq_queries: int = 500  # test photos degraded per degradation and severity
    severities: tuple[int, ...] = (1, 2, 3, 4, 5)
    val_queries: int = 2000  # validation title queries used to choose settings
    strategies: tuple[str, ...] = ("seeds", "bagging", "cluster")
    seed: int = 0
    out: Path = Path("bench/out")
    train: TrainCfg = field(default_factory=TrainCfg)
    backbone: BackboneCfg = field(default_factory=BackboneCfg)  # every system starts from this CLIP


@dataclass
class System:
    name: str
    members: int
    strategy: str
    epochs: int
    fraction: float = 1.0
    fusion: str = "mean"


def training_catalogue(catalogue: Catalogue, cfg: BenchCfg) -> Catalogue:
    """The train and validation items the benchmark trains on (all, or a seeded share in quick mode)."""
    if cfg.train_share == 1:
        return catalogue  # everything: trunk caches built for the whole catalogue can be reused
    split = split_indices(catalogue.ids)
    train = split["train"]
    if cfg.train_share < 1:
        keep = int(round(len(train) * cfg.train_share))
        train = np.sort(np.random.default_rng([cfg.seed, 5]).choice(train, keep, replace=False))
    val = split["val"][: max(cfg.val_queries, 500)]
    return catalogue.subset(np.sort(np.concatenate([train, val])))


class Bench:
    """Trains, indexes and evaluates systems, caching every artefact under ``cfg.out``."""

    def __init__(self, catalogue: Catalogue, cfg: BenchCfg):
        self.catalogue = catalogue
        self.cfg = cfg
        self.train_catalogue = training_catalogue(catalogue, cfg)
        self.results: dict[str, dict] = {}
        self.train_seconds: dict[str, float] = {}
        self.seconds = {"train": 0.0, "index": 0.0, "evaluate": 0.0}  # where this run's time went, by phase
        self._loaded: tuple[str, Searcher] | None = None  # the last index searched, kept for its next evaluations

    def model_dir(self, system: System) -> Path:
        return self.cfg.out / "models" / system.name

    def train(self, system: System) -> Path:
        out = self.model_dir(system)
        if (out / "ensemble.json").exists():
            return out
        train = replace(self.cfg.train, epochs=system.epochs, seed=self.cfg.seed, patience=system.epochs)
        run = RunCfg(backbone=self.cfg.backbone, train=train,
                     ensemble=EnsembleCfg(members=system.members, strategy=system.strategy,
                                          fusion=system.fusion, data_fraction=system.fraction),
                     cache_dir=str(self.cfg.out / "cache" / "train"),
                     trunk_cache=str(self.cfg.out / "cache" / "catalogue"))  # clean views shared with indexing
        started = time.perf_counter()
        train_system(self.train_catalogue, out, run, resume=True)
        self.train_seconds[system.name] = time.perf_counter() - started
        self.seconds["train"] += self.train_seconds[system.name]
        return out

    def index(self, system: System) -> Path:
        out = self.cfg.out / "indexes" / system.name
        if not (out / "index.json").exists():
            model = self.train(system)
            started = time.perf_counter()
            # exact search for every system: the benchmark compares models, not index approximations
            cfg = IndexBuildCfg(index=IndexCfg(kind="flat"), trunk_cache=str(self.cfg.out / "cache" / "catalogue"))
            build_index(model, self.catalogue, out, cfg)
            self.seconds["index"] += time.perf_counter() - started
        return out

    def member_index(self, system: System, member: int) -> Path:
        """Member ``member`` of an ensemble as its own single-model index (its slice of the ensemble vectors)."""
        out = self.cfg.out / "indexes" / f"{system.name}-member{member}"
        if not (out / "index.json").exists():
            searcher = Searcher.load(self.index(system))
            d = searcher.dim
            vectors = searcher.index.reconstruct(np.arange(len(searcher.index)))[:, member * d : (member + 1) * d]
            write_index(self.model_dir(system) / "members" / str(member), self.catalogue, vectors, out)
        return out

    def evaluate(self, label: str, index_dir: Path, tasks: tuple[str, ...], split: str = "test",
                 fusion: str | None = None, search_cfg: SearchCfg | None = None) -> dict:
        key = f"{label}@{split}"
        if key not in self.results:
            max_queries = self.cfg.val_queries if split == "val" else self.cfg.max_queries
            eval_cfg = EvalCfg(tasks=tasks, split=split, max_queries=max_queries, lq_queries=self.cfg.lq_queries,
                               severities=self.cfg.severities, fusion=fusion, seed=self.cfg.seed)
            out = self.cfg.out / "metrics" / f"{label}-{split}.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            started = time.perf_counter()
            self.results[key] = cached_evaluation(out, lambda: evaluate_index(
                index_dir, eval_cfg, out=out, searcher=self.searcher(index_dir, search_cfg)),
                rescoring=(search_cfg or SearchCfg()).rescoring())
            self.seconds["evaluate"] += time.perf_counter() - started
        return self.results[key]


    def searcher(self, index_dir: Path, search_cfg: SearchCfg | None = None) -> Searcher:
        """The index loaded once for all its evaluations (fusion rules, splits), its text encodings remembered:
        the rules differ only in how member scores combine, so re-encoding the same queries would be waste."""
        if self._loaded is None or self._loaded[0] != str(index_dir):
            self._loaded = None  # release the previous index before loading the next
            searcher = Searcher.load(index_dir)
            searcher.model = RememberedTexts(searcher.model)
            self._loaded = (str(index_dir), searcher)
        searcher = self._loaded[1]
        if search_cfg is None:
            return searcher
        variant = copy.copy(searcher)  # shares model, vectors and items; only the search settings differ
        variant.cfg = search_cfg
        return variant


class RememberedTexts:
    """A model whose text embeddings are computed once per distinct text (every other call goes to the model)."""

    def __init__(self, model):
        self.model = model
        self.vectors: dict[str, np.ndarray] = {}

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        new = [text for text in dict.fromkeys(texts) if text not in self.vectors]
        if new:
            self.vectors.update(zip(new, self.model.encode_texts(new).transpose(1, 0, 2)))
        return np.stack([self.vectors[text] for text in texts], axis=1)

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __len__(self) -> int:
        return len(self.model)


def cached_evaluation(out: Path, run, rescoring: dict | None = None) -> dict:
    """Metrics and per-query values from a previous run of the benchmark, or from ``run()`` now. With ``rescoring``
    (``SearchCfg.rescoring()``), a previous run counts only if it ranked with those settings; one that did not
    (or did not say, as runs before pseudo-relevance feedback) is evaluated again."""
    per_query = out.with_suffix(".npz")
    if out.exists() and per_query.exists():
        result = json.loads(out.read_text())
        if rescoring is not None and result.get("_meta", {}).get("rescoring") != rescoring:
            log.info("%s was ranked with other search settings than %s: evaluating again", out, rescoring)
            return _evaluate(per_query, run)
        with np.load(per_query) as arrays:
            result["per_query"] = {key.replace("|", "/"): arrays[key] for key in arrays.files}
        return result
    return _evaluate(per_query, run)


def _evaluate(per_query: Path, run) -> dict:
    result = run()
    np.savez(per_query, **{key.replace("/", "|"): np.asarray(v) for key, v in result["per_query"].items()})
    return result


def member_diversity(index_dir: Path, texts: list[str], k: int = 10) -> dict:
    """How differently the members rank: mean pairwise top-k overlap and score correlation over all items."""
    searcher = Searcher.load(index_dir)
    m, d = searcher.members, searcher.dim
    items = searcher.index.reconstruct(np.arange(len(searcher.index))).reshape(-1, m, d)
    overlaps, correlations = [], []
    for text in texts:
        scores = np.einsum("nmd,md->mn", items, searcher.encode_query(text=text))
        tops = [set(np.argpartition(-row, k)[:k].tolist()) for row in scores]
        pairs = [(i, j) for i in range(m) for j in range(i + 1, m)]
        overlaps += [len(tops[i] & tops[j]) / k for i, j in pairs]
        correlations += [float(np.corrcoef(scores[i], scores[j])[0, 1]) for i, j in pairs]
    return {"top10_overlap": float(np.mean(overlaps)), "score_correlation": float(np.mean(correlations)),
            "queries": len(texts)}


def cluster_balance(model_dir: Path) -> list[dict]:
    """Per specialist of a cluster ensemble: its cluster's size and main article types, the items it trained on
    (its cluster plus the mixed-in share of others) and its own best validation R@10 over the whole catalogue."""
    summary = json.loads((model_dir / "clusters" / "summary.json").read_text())
    rows = []
    for entry in summary:
        member = json.loads((model_dir / "members" / str(entry["cluster"]) / "model.json").read_text())
        rows.append({"cluster": entry["cluster"], "size": entry["size"], "member_items": member["member_items"],
                     "train_items": member["train_items"], "val_R@10": member.get("best_val_recall_at_10"),
                     "article_types": [name for name, _ in entry["top"].get("articleType", [])]})
    return rows


def training_costs(out: Path) -> dict[str, dict]:
    """Training wall time of every system under ``out/models``: the whole run (its first trunk caching included),
    from ``ensemble.json``, and each member's epochs with their validation, from the member checkpoints' history.
    A system whose members were partly trained by an earlier, interrupted run is marked ``resumed``: its wall time
    covers only the last run and its members' time is unknown."""
    import torch

    costs = {}
    for path in sorted((out / "models").glob("*/ensemble.json")):
        saved = json.loads(path.read_text())
        members, resumed = [], False
        for member in saved["members"]:
            history = torch.load(path.parent / member / "checkpoint.pt", weights_only=False)["state"]["history"]
            timed = [entry.get("seconds") for entry in history]
            resumed |= None in timed and any(t is not None for t in timed)
            members.append(None if None in timed else sum(timed))
        costs[path.parent.name] = {"members": len(saved["members"]), "seconds": saved.get("train_seconds"),
                                   "member_seconds": members, "resumed": resumed}
    return costs


def figure(result: dict, key: str) -> dict:
    return {name: result[key][name] for name in ("mean", "low", "high")}


def compare(a: dict, b: dict, key: str) -> dict:
    """Paired bootstrap of a − b over the same queries."""
    diff = paired_bootstrap_diff(np.asarray(a["per_query"][key]), np.asarray(b["per_query"][key]))
    return diff.to_dict()


def systems_for(cfg: BenchCfg) -> dict[str, System]:
    k, e = cfg.members, cfg.epochs
    systems = {
        "single": System("single", 1, "seeds", e),
        f"single-{k}x": System(f"single-{k}x", 1, "seeds", k * e),
    }
    for strategy in cfg.strategies:
        systems[f"ens-{strategy}"] = System(f"ens-{strategy}", k, strategy, e)
    return systems


def run_quality(bench: Bench) -> dict:
    """Section 1: systems, strategies, fusion rules, members alone and hard routing; choose defaults on val."""
    cfg = bench.cfg
    systems = systems_for(cfg)
    report: dict = {"systems": {}, "val": {}, "fusion": {}, "members": {}, "diffs": {}}
    for name, system in systems.items():
        index = bench.index(system)
        report["val"][name] = figure(bench.evaluate(name, index, ("title2img",), split="val"), "title2img/R@10")
    ensembles = [n for n in systems if n.startswith("ens-")]
    for name in ensembles:
        index = bench.index(systems[name])
        for rule in FUSION_RULES:
            result = bench.evaluate(f"{name}-{rule}", index, ("title2img",), split="val", fusion=rule)
            report["fusion"][f"{name}/{rule}@val"] = figure(result, "title2img/R@10")
        hard = bench.evaluate(f"{name}-hard-route", index, ("title2img",), split="val", fusion="routed",
                              search_cfg=SearchCfg(fusion="routed", route_temperature=1e-4))
        report["fusion"][f"{name}/hard-route@val"] = figure(hard, "title2img/R@10")
    val_titles = [bench.catalogue.titles[p] for p in split_indices(bench.catalogue.ids)["val"][:200]]
    report["diversity"] = {name: member_diversity(bench.index(systems[name]), val_titles) for name in ensembles}
    if "ens-cluster" in systems:
        report["clusters"] = cluster_balance(bench.model_dir(systems["ens-cluster"]))
    best_name, best_rule = max(((n, r) for n in ensembles for r in (*FUSION_RULES, "hard-route")),
                               key=lambda nr: report["fusion"][f"{nr[0]}/{nr[1]}@val"]["mean"])
    report["chosen"] = {"system": best_name, "fusion": best_rule, "by": "validation title2img R@10"}
    log.info("chosen on validation: %s with %s fusion", best_name, best_rule)
    return _score_on_test(bench, systems, report)


def _score_on_test(bench: Bench, systems: dict[str, System], report: dict) -> dict:
    best_name, best_rule = report["chosen"]["system"], report["chosen"]["fusion"]
    tasks = ("title2img", "title2img_dup", "attr2img", "img2img_lq", "both2img")
    search_cfg = SearchCfg(fusion="routed", route_temperature=1e-4) if best_rule == "hard-route" else None
    rule = "routed" if best_rule == "hard-route" else best_rule
    enclip = bench.evaluate("enclip", bench.index(systems[best_name]), tasks, fusion=rule, search_cfg=search_cfg)
    report["systems"]["enclip"] = enclip
    for name in ("single", f"single-{bench.cfg.members}x"):
        report["systems"][name] = bench.evaluate(name, bench.index(systems[name]), tasks)
    for name in systems:
        if name == best_name:  # test figures for the chosen ensemble's rules; the others are compared on val
            for fusion_rule in FUSION_RULES:
                result = bench.evaluate(f"{name}-{fusion_rule}", bench.index(systems[name]), ("title2img",),
                                        fusion=fusion_rule)
                report["fusion"][f"{name}/{fusion_rule}@test"] = figure(result, "title2img/R@10")
    for member in range(bench.cfg.members):
        index = bench.member_index(systems[best_name], member)
        report["members"][member] = figure(bench.evaluate(f"{best_name}-member{member}", index, ("title2img",)),
                                           "title2img/R@10")
    for name in ("single", f"single-{bench.cfg.members}x"):
        report["diffs"][f"enclip-{name}"] = compare(enclip, report["systems"][name], "title2img/R@10")
    report["train_seconds"] = dict(bench.train_seconds)
    return report


def run_limited_data(bench: Bench, chosen: dict) -> dict:
    """Section 2: the headline comparison at each share of the train split."""
    cfg = bench.cfg
    base = systems_for(cfg)
    rule = "routed" if chosen["fusion"] == "hard-route" else chosen["fusion"]
    curves: dict[str, dict] = {"single": {}, f"single-{cfg.members}x": {}, "enclip": {}}
    for fraction in cfg.fractions:
        for label, template in (("single", base["single"]), (f"single-{cfg.members}x", base[f"single-{cfg.members}x"]),
                                ("enclip", base[chosen["system"]])):
            system = template if fraction == 1 else replace(template, name=f"{template.name}-f{fraction}",
                                                             fraction=fraction)
            fusion = rule if label == "enclip" else None
            result = bench.evaluate(f"{system.name}-{fusion or 'mean'}", bench.index(system), ("title2img",),
                                    fusion=fusion)
            curves[label][fraction] = figure(result, "title2img/R@10")
    return curves
