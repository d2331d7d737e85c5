"""The ``enclip`` command: each subcommand maps flags onto a config and calls one library function."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

from enclip.errors import EnclipError
from enclip.fusion import FUSION_RULES
from enclip.search_request import CHANNEL_FUSIONS, CHANNELS

log = logging.getLogger("enclip")

SHARED_CATALOGUE = Path(__file__).resolve().parents[3] / "shared/data/fashion-product-images-small"


def default_data() -> str | None:
    return str(SHARED_CATALOGUE) if SHARED_CATALOGUE.exists() else None


def _columns(spec: str | None):
    from enclip.data.catalogue import ColumnMap

    if not spec:
        return None
    fields = {}
    for part in spec.split(","):
        key, _, value = part.partition("=")
        if not value or key not in ("id", "title", "image", "attributes"):
            raise EnclipError(f"--columns takes id=COL,title=COL,image=COL[,attributes=A|B]; got {part!r}")
        fields[key] = tuple(value.split("|")) if key == "attributes" else value
    return ColumnMap(**fields)


def load_data(args, out_dir: Path | None = None):
    """Load --data (or the shared catalogue), write the skip report beside the outputs, log one summary line."""
    from enclip.data.catalogue import load_catalogue

    source = args.data or default_data()
    if source is None:
        raise EnclipError(f"no catalogue given and none at {SHARED_CATALOGUE}; pass --data PATH")
    catalogue, report = load_catalogue(source, _columns(args.columns), limit=args.limit,
                                       confine_images=getattr(args, "confine_images", False))
    log.info(report.summary_line())
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        report.write(out_dir / "skip_report.json")
    return catalogue, report


def _data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="catalogue: parquet folder, Kaggle folder, csv/jsonl/parquet file or hub id "
                        "(default: the shared Fashion Product Images copy when present)")
    parser.add_argument("--columns", help="column mapping for generic tables: id=COL,title=COL,image=COL")
    parser.add_argument("--limit", type=int, help="read only the first N rows (quick trials)")
    parser.add_argument("--confine-images", action="store_true", help="skip rows whose image path leaves the "
                        "catalogue's folder (absolute elsewhere, or ..); for catalogues from others")


def _duration(value: str) -> float:
    from enclip.train.budget import parse_duration

    try:
        return parse_duration(value)
    except EnclipError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _duration_or_none(value: str) -> float | None:
    return None if value.strip().lower() == "none" else _duration(value)


def _trainable(value: str) -> int:
    return -1 if value == "all" else int(value)


def _train_args(parser: argparse.ArgumentParser) -> None:
    from enclip.models.ensemble import HeadCfg
    from enclip.models.registry import BackboneCfg
    from enclip.train.alignment import PROJECTION_INITS
    from enclip.train.objective import PAIR_LOSSES, PROTOTYPES
    from enclip.train.run import STRATEGIES, EnsembleCfg
    from enclip.train.trainer import COMPILE_MIN_STEPS, COMPILE_MODES, VALIDATE_MODES, TrainCfg

    b, t, h, e = BackboneCfg(), TrainCfg(), HeadCfg(), EnsembleCfg()
    parser.add_argument("--backbone", default=b.name,
                        help="offline, an open_clip arch, hf-hub:ID, local-dir:DIR, hf-clip:DIR")
    parser.add_argument("--pretrained", default=b.pretrained, help="open_clip pretrained tag or weights file")
    parser.add_argument("--embed-dim", type=int, default=b.embed_dim)
    parser.add_argument("--image-size", type=int, default=b.image_size, help="model input height (and width)")
    parser.add_argument("--image-width", type=int, default=b.image_width,
                        help="model input width if not square (offline backbone; 72 fits 60x80 photos unpadded)")
    parser.add_argument("--members", type=int, default=e.members, help="ensemble size K (1 = single model)")
    parser.add_argument("--strategy", default=e.strategy, choices=STRATEGIES,
                        help="what members differ by; snapshot: K learning-rate cycles of one run (see `enclip soup`)")
    parser.add_argument("--mix", type=float, default=e.mix, help="cluster strategy: share of out-of-cluster items")
    parser.add_argument("--fusion", default=e.fusion, choices=FUSION_RULES)
    parser.add_argument("--data-fraction", type=float, default=e.data_fraction)
    parser.add_argument("--epochs", type=int, default=t.epochs,
                        help="passes over the training items (under --time-budget: at most this many)")
    parser.add_argument("--time-budget", type=_duration, default=None, metavar="DURATION",
                        help="wall-clock time the whole run may take, trunk caching included (600, 10m, 1.5h): "
                        "the steps are planned from this machine's measured step time to end within it, and "
                        "fitted again to the time left at each epoch's end")
    parser.add_argument("--validate", default=t.validate, choices=VALIDATE_MODES,
                        help="when validation recall is measured: every epoch (early stopping, best epoch kept) or "
                        "only the last (and a snapshot's cycle ends); auto: last under --time-budget, else every")
    parser.add_argument("--cycle-shares", type=float, nargs="+", default=list(t.cycle_shares), metavar="SHARE",
                        help="snapshot: each member's learning-rate cycle's share of the steps (default: even)")
    parser.add_argument("--restart-lr", type=float, default=t.restart_lr, metavar="FACTOR",
                        help="snapshot: peak learning rate of the cycles after the first, as a share of the first's")
    parser.add_argument("--batch-size", type=int, default=t.batch_size)
    parser.add_argument("--lr", type=float, default=t.lr, help="peak learning rate of new layers and the temperature")
    parser.add_argument("--block-lr", type=float, default=t.block_lr,
                        help="peak learning rate of the unfrozen pretrained blocks")
    parser.add_argument("--trainable-image", type=_trainable, default=h.trainable_image,
                        help="image blocks trained from the top: 0 = projection only, N, or 'all'")
    parser.add_argument("--trainable-text", type=_trainable, default=h.trainable_text,
                        help="text layers trained from the top: 0 = projection only, N, or 'all'")
    parser.add_argument("--colour-branch", action=argparse.BooleanOptionalAction, default=h.colour,
                        help="give the image head a colour thumbnail of each photo beside the frozen trunk's features")
    parser.add_argument("--text-adapter", type=int, default=h.text_adapter, metavar="WIDTH",
                        help="hidden units of a residual MLP on each text embedding (0: none); with "
                        "--trainable-text 0, a text head that costs almost nothing a step")
    parser.add_argument("--token-bag", type=int, default=h.token_bag, metavar="RANK",
                        help="add to each text embedding a learned RANK-wide vector per caption token (0: none); "
                        "with --trainable-text 0")
    parser.add_argument("--frozen-depthwise", action=argparse.BooleanOptionalAction, default=t.frozen_depthwise,
                        help="keep the image head's depthwise convolutions as pretrained (a cheaper backward pass)")
    parser.add_argument("--frozen-norms", action=argparse.BooleanOptionalAction, default=t.frozen_norms,
                        help="train the image head with its batch norms on their pretrained statistics")
    parser.add_argument("--cpu-amp", action=argparse.BooleanOptionalAction, default=t.cpu_amp,
                        help="on a CPU with AMX tiles, run the text head in bfloat16 (off: it was level on validation "
                        "and on epoch time here)")
    parser.add_argument("--compile", default=t.compile, choices=COMPILE_MODES,
                        help="compile the image head's training steps with torch.compile (auto: when a member "
                        f"trains {COMPILE_MIN_STEPS} steps or more, where it repays its compile time)")
    parser.add_argument("--views", type=int, default=t.views, help="degraded views cached per training image")
    parser.add_argument("--degraded-share", type=float, default=t.degraded_share, metavar="SHARE",
                        help="share of each step's photos shown degraded, the rest clean (default: every cached view "
                        "equally likely, so half with one degraded view)")
    parser.add_argument("--attribute-captions", action="store_true", help="also train on attribute sentences")
    parser.add_argument("--loss", default=t.loss, choices=PAIR_LOSSES,
                        help="contrastive loss: CLIP's 'softmax' over the batch, or SigLIP's per-pair 'sigmoid'")
    parser.add_argument("--temperature", type=float, default=t.temperature,
                        help="the contrastive loss's starting temperature, learned from there (default: the "
                        "backbone's, 0.07 for new projections)")
    parser.add_argument("--aux-columns", nargs="*", default=list(t.aux_columns),
                        help="attribute columns both embeddings learn to classify (auxiliary losses)")
    parser.add_argument("--aux-weight", type=float, default=t.aux_weight,
                        help="weight of the auxiliary attribute losses (0 = off)")
    parser.add_argument("--aux-rank-photos", type=float, nargs="?", const=0.5, default=t.aux_rank_photos,
                        metavar="WEIGHT", help="the auxiliary losses also let each class rank the batch's photos, its "
                        "own first (what a bare attribute query asks), with this weight (alone: 0.5; 0 = off)")
    parser.add_argument("--mirror", type=float, nargs="?", const=0.5, default=t.mirror, metavar="SHARE",
                        help="mirror this share of the training photos left to right in each step, by flipping their "
                        "cached feature maps (alone: 0.5; 0 = off)")
    parser.add_argument("--aux-prototypes", default=t.aux_prototypes, choices=PROTOTYPES,
                        help="the auxiliary losses' class vectors: free 'learned' vectors, or the 'names' of the "
                        "classes (e.g. 'Navy Blue') through the text head, which also teaches it attribute words")
    parser.add_argument("--projection-init", default=t.projection_init, choices=PROJECTION_INITS,
                        help="how new projections start: 'cca', fitted to the training pairs in closed form before "
                        "the first step (the default: it beat 'random' on validation), or 'random'")
    parser.add_argument("--batch-clusters", type=int, default=t.batch_clusters,
                        help="draw each batch within one of N image clusters (hard negatives; 0 = random batches)")
    parser.add_argument("--seed", type=int, default=t.seed)
    parser.add_argument("--device", default=t.device)
    parser.add_argument("--keep-cache", action="store_true", help="keep cached trunk features after training")
    parser.add_argument("--trunk-cache", help="catalogue-wide image trunk cache to share with `enclip index`")
    _engine_args(parser, "members one after another here, or as Ray tasks")


def _rescoring_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hubness", type=float, help="weight of each item's hubness penalty in text queries "
                        "(default 0.5, fitted on validation; 0 ranks by plain cosines)")
    parser.add_argument("--feedback", type=float, help="weight of pseudo-relevance feedback in text queries: the "
                        "candidates' cosines to the mean photo of the 10 best are added (default 0.25, fitted on "
                        "validation; 0 turns it off)")
    parser.add_argument("--bridge", type=float, help="weight of the photos a text query borrows from the training "
                        "items whose titles are nearest to it, on the photo channel (default 0.2, fitted on "
                        "validation; 0 turns it off; see `index --no-bridge`)")
    parser.add_argument("--bridge-labels", type=float, help="weight of the direction among the training photos that "
                        "a text query borrows from an attribute value it names, such as 'Tshirts' (the bridge's label "
                        "supports; default 10, fitted on validation, for a query that is the value itself: a query "
                        "that only contains it, such as 'yellow deodorant', is pulled at its cosine to the value to "
                        "the 16th power; 0 turns them off; see `index --no-bridge-labels`)")


def _engine_args(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--engine", default="local", choices=["local", "ray"], help=f"{what} (ray: pip install "
                        "'enclip[scale]'; without --address it starts a local cluster on 127.0.0.1)")
    parser.add_argument("--address", help="engine ray: an existing cluster's head, HOST:PORT (see docs/SCALING.md)")


def run_cfg(args):
    from enclip.data.captions import CaptionCfg
    from enclip.models.ensemble import HeadCfg
    from enclip.models.registry import BackboneCfg
    from enclip.train.run import EnsembleCfg, RunCfg
    from enclip.train.trainer import TrainCfg

    backbone = BackboneCfg(name=args.backbone, pretrained=args.pretrained, embed_dim=args.embed_dim,
                           image_size=args.image_size, image_width=args.image_width)
    train = TrainCfg(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, block_lr=args.block_lr,
                     views=args.views, seed=args.seed,
                     heads=HeadCfg(args.trainable_image, args.trainable_text, args.colour_branch,
                                   args.text_adapter, args.token_bag), device=args.device,
                     captions=CaptionCfg(use_attributes=args.attribute_captions),
                     loss=args.loss, temperature=args.temperature,
                     aux_columns=tuple(args.aux_columns), aux_weight=args.aux_weight,
                     aux_prototypes=args.aux_prototypes, aux_rank_photos=args.aux_rank_photos,
                     mirror=args.mirror, degraded_share=args.degraded_share,
                     batch_clusters=args.batch_clusters,
                     frozen_depthwise=args.frozen_depthwise, frozen_norms=args.frozen_norms,
                     cpu_amp=args.cpu_amp, compile=args.compile, validate=args.validate,
                     cycle_shares=tuple(args.cycle_shares), restart_lr=args.restart_lr,
                     projection_init=args.projection_init)
    ensemble = EnsembleCfg(members=args.members, strategy=args.strategy, mix=args.mix, fusion=args.fusion,
                           data_fraction=args.data_fraction)
    return RunCfg(backbone=backbone, train=train, ensemble=ensemble, keep_cache=args.keep_cache,
                  trunk_cache=args.trunk_cache, engine=args.engine, ray_address=args.address,
                  time_budget=args.time_budget)


def cmd_train(args) -> int:
    from enclip.train.run import train_system

    out = Path(args.out)
    catalogue, _ = load_data(args, out)
    train_system(catalogue, out, run_cfg(args), resume=args.resume)
    print(f"model written to {out}; next: enclip index --model {out} --out {out}/index")
    return 0


def cmd_soup(args) -> int:
    from enclip.models.soup import soup

    out = soup(args.model, args.out)
    print(f"soup of {args.model}'s members written to {out}; next: enclip index --model {out} --out {out}/index")
    return 0


def _index_channels(spec: str) -> tuple[str, ...]:
    channels = tuple(part.strip() for part in spec.split(",") if part.strip())
    unknown = [c for c in channels if c not in CHANNELS]
    if unknown or "image" not in channels:
        raise EnclipError(f"--channels takes a comma-separated subset of {','.join(CHANNELS)} that includes image; "
                          f"got {spec!r}")
    return channels


def _index_cfg(args):
    """The vector store: faiss in the index directory, or a Milvus collection (--kind picks FLAT or HNSW there)."""
    from enclip.vectors import IndexCfg

    if args.store == "faiss":
        return IndexCfg(kind=args.kind, dtype=args.dtype)
    if not args.uri:
        raise EnclipError("--store milvus needs --uri: a .db file for embedded Milvus Lite or http://host:19530")
    if args.kind not in ("auto", "flat", "hnsw"):
        raise EnclipError(f"--store milvus builds a flat or hnsw index (or auto), not {args.kind!r}")
    return IndexCfg(kind="milvus", dtype=args.dtype, milvus_uri=args.uri, milvus_collection=args.collection,
                    milvus_index=args.kind)


def cmd_index(args) -> int:
    from enclip.indexing import IndexBuildCfg, build_index

    out = Path(args.out)
    catalogue, report = load_data(args)
    cfg = IndexBuildCfg(index=_index_cfg(args), device=args.device, trunk_cache=args.trunk_cache,
                        channels=_index_channels(args.channels), engine=args.engine, ray_address=args.address,
                        bridge=not args.no_bridge, bridge_labels=not args.no_bridge_labels,
                        **({} if args.hubness_k is None else {"hubness_k": args.hubness_k}))
    build_index(args.model, catalogue, out, cfg, resume=args.resume, skip_report=report)
    print(f"index written to {out}; next: enclip search --index {out} --text \"navy check shirt\"")
    return 0


def cmd_cluster(args) -> int:
    from enclip.cluster.catalogue import cluster_catalogue

    catalogue, _ = load_data(args, Path(args.out))
    cluster_catalogue(catalogue, Path(args.out), k=args.k, k_range=tuple(args.k_range), model=args.model)
    print(f"clusters written to {args.out} (summary.md, contact_sheets.png)")
    return 0


def _filters(pairs: Sequence[str] | None) -> dict[str, list[str]]:
    filters: dict[str, list[str]] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise EnclipError(f"--filter takes KEY=VALUE, e.g. --filter gender=Men; got {pair!r}")
        filters.setdefault(key, []).append(value)
    return filters


def _print_result(result, as_json: bool) -> None:
    if as_json:
        print(json_line(result.to_dict()))
        return
    if result.low_confidence:
        print("(low confidence: the ensemble members disagree on this query)")
    for rank, hit in enumerate(result.hits, 1):
        attrs = ", ".join(f"{k}={v}" for k, v in hit.attributes.items() if v and k in (
            "gender", "articleType", "baseColour", "usage"))
        found = f"  ({hit.explanation})" if len(result.channels) > 1 else ""
        print(f"{rank:>3}. {hit.score:.3f}  {hit.id:>8}  {hit.title}  [{attrs}]{found}")


def _fusion_weights(spec: str | None) -> dict[str, float] | None:
    """``image=1,text=1,keyword=0.5`` -> {"image": 1.0, ...}; None when not given."""
    if not spec:
        return None
    weights = {}
    for part in spec.split(","):
        key, sep, value = part.partition("=")
        try:
            weights[key.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not key.strip():
            raise EnclipError(f"--fusion-weights takes CHANNEL=NUMBER pairs, e.g. image=1,text=1,keyword=0.5; "
                              f"got {part!r}")
    return weights


def _searcher_options(args) -> dict:
    """Search settings given on the command line (only those given: the rest keep SearchCfg's defaults)."""
    return {name: getattr(args, name) for name in ("hubness", "feedback", "bridge", "bridge_labels")
            if getattr(args, name) is not None}


def cmd_search(args) -> int:
    from enclip.search import load_searcher
    from enclip.search_request import check_limits

    check_limits(args.k, args.weight)  # before loading the index: a huge k is refused at once
    searcher = load_searcher(args.index, **_searcher_options(args))
    options = dict(k=args.k, filters=_filters(args.filter), weight=args.weight, fusion=args.fusion,
                   clusters=args.clusters, channels=args.channels, fusion_weights=_fusion_weights(args.fusion_weights),
                   channel_fusion=args.channel_fusion)
    if args.queries:
        return _batch_search(searcher, Path(args.queries), options)
    result = searcher.search(text=args.text, image=args.image, **options)
    _print_result(result, args.json)
    return 0


# characters JSON leaves raw but line readers split on (str.splitlines, JavaScript): NEL, LINE and PARAGRAPH SEPARATOR
_LINE_BREAKS = {"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def json_line(value) -> str:
    """One JSON document on exactly one line, non-ASCII text kept readable, whatever the strings in it hold."""
    text = json.dumps(value, ensure_ascii=False)
    for raw, escaped in _LINE_BREAKS.items():
        text = text.replace(raw, escaped)
    return text


def _batch_search(searcher, path: Path, options: dict) -> int:
    """One JSON result per input line; a bad line gets an error line and the rest still answer.

    Each line is validated with the HTTP API's schema (plus an ``image`` path); fields it leaves out take the
    command line's values.
    """
    try:
        lines = path.read_bytes().splitlines()
    except OSError as error:
        raise EnclipError(f"cannot read --queries file {path}: {error}") from error
    failures = 0
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            result = _search_line(searcher, line, options)
            print(json_line({"line": number, **result.to_dict()}))
        except EnclipError as error:
            failures += 1
            print(json_line({"line": number, "error": str(error)}))
    return 1 if failures else 0


def _search_line(searcher, line: bytes, options: dict):
    from enclip.search_request import QueryLine, check_limits, parse_request

    try:
        text = line.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise EnclipError("the line is not UTF-8 text; save the queries file as UTF-8") from None
    request = parse_request(text, QueryLine)
    given = request.model_dump(include=request.model_fields_set & {"k", "weight", "fusion", "filters", "channels",
                                                                   "fusion_weights", "channel_fusion"})
    merged = {**options, **given}
    check_limits(merged["k"], merged["weight"])
    image = request.image
    if request.image_id is not None:
        if image is not None:
            raise EnclipError("give either 'image' (a path) or 'image_id' (a catalogue item), not both")
        image = searcher.image_bytes(request.image_id)
    return searcher.search(text=request.text, image=image, **merged)


def cmd_eval(args) -> int:
    from enclip.eval.evaluate import EvalCfg, evaluate_index

    cfg = EvalCfg(tasks=tuple(args.tasks), max_queries=args.max_queries, queries_file=args.queries,
                  fusion=args.fusion, hubness=args.hubness, feedback=args.feedback, bridge=args.bridge,
                  bridge_labels=args.bridge_labels)
    evaluate_index(args.index, cfg, out=Path(args.out) if args.out else None)
    return 0


def cmd_serve(args) -> int:
    from enclip.search import load_searcher
    from enclip.serve.app import ServeCfg, resolve_admin_token, serve

    searcher = load_searcher(args.index, **_searcher_options(args))
    cfg = ServeCfg(host=args.host, port=args.port, admin_token=resolve_admin_token(),
                   changelog_path=Path(args.changelog) if args.changelog else searcher.changelog_path)
    serve(searcher, cfg)
    return 0


def cmd_demo(args) -> int:
    from enclip.demo import DEMO_BUDGET, DemoCfg, run_demo

    out = Path(args.out)
    catalogue, report = load_data(args, out)
    return run_demo(catalogue, DemoCfg(out=out, quick=args.quick, eval_queries=args.eval_queries,
                                       time_budget=getattr(args, "time_budget", DEMO_BUDGET)), report)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="enclip", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="fine-tune a model or an ensemble on a catalogue")
    _data_args(p)
    _train_args(p)
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("soup", help="average a snapshot ensemble's members into one model (one model's query cost)")
    p.add_argument("model", help="ensemble directory trained with --strategy snapshot")
    p.add_argument("--out", required=True, help="model directory to write (must not hold a model yet)")
    p.set_defaults(func=cmd_soup)

    p = sub.add_parser("index", help="embed a catalogue with a trained model and build a search index")
    _data_args(p)
    p.add_argument("--model", required=True, help="model directory from enclip train")
    p.add_argument("--out", required=True, help="index directory to write (replaced atomically)")
    p.add_argument("--kind", default="auto", choices=["auto", "flat", "hnsw", "ivf", "exact"],
                   help="auto: exact flat search for small indexes (items x K*d up to 16.8M numbers), hnsw beyond")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    p.add_argument("--device", default="auto")
    p.add_argument("--resume", action="store_true", help="reuse embedding shards of an interrupted run")
    p.add_argument("--channels", default=",".join(CHANNELS), help="search channels to build: image (photos) plus "
                   "text (item text by the text tower) and keyword (BM25); default all")
    p.add_argument("--trunk-cache", help="catalogue-wide image trunk cache shared with `enclip train --trunk-cache`")
    p.add_argument("--hubness-k", type=int, help="each item's hubness penalty averages its cosines to this many "
                   "nearest catalogue titles (default 100; 0 builds none; see `search --hubness`)")
    p.add_argument("--no-bridge", action="store_true", help="build no title bridge (the training items' titles and "
                   "photo vectors that text queries borrow from; see `search --bridge`)")
    p.add_argument("--no-bridge-labels", action="store_true", help="give the title bridge no label supports (each "
                   "attribute value's direction among the training photos, which a query naming the value borrows)")
    p.add_argument("--store", default="faiss", choices=["faiss", "milvus"],
                   help="where item vectors live: faiss in the index directory (default) or a Milvus collection")
    p.add_argument("--uri", help="store milvus: a .db file (embedded Milvus Lite) or http://host:19530 (a server; "
                   "token in ENCLIP_MILVUS_TOKEN)")
    p.add_argument("--collection", default="enclip_items", help="store milvus: collection name prefix")
    _engine_args(p, "embed the catalogue here, or with an actor pool on a Ray cluster")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("cluster", help="cluster catalogue images and write readable summaries")
    _data_args(p)
    p.add_argument("--out", required=True)
    p.add_argument("--k", type=int, help="number of clusters (default: chosen by silhouette)")
    p.add_argument("--k-range", type=int, nargs=2, default=(2, 12))
    p.add_argument("--model", help="cluster a fine-tuned model's image embeddings instead of the base features")
    p.set_defaults(func=cmd_cluster)

    p = sub.add_parser("search", help="search an index by text, image or both")
    p.add_argument("--index", required=True)
    p.add_argument("--text")
    p.add_argument("--image", help="path of a query photo")
    p.add_argument("--weight", type=float, default=0.5, help="text share of the score when both are given")
    p.add_argument("--filter", action="append", help="KEY=VALUE; repeat for more (same key: any of the values)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--fusion", choices=FUSION_RULES)
    p.add_argument("--clusters", type=int, help="score only the items of the query's nearest C clusters")
    p.add_argument("--channels", help="what a text query is matched against, any of image,text,keyword "
                   "(default: every channel the index has; --channels image searches photos only)")
    p.add_argument("--fusion-weights", help="channel weights in the fused ranking, e.g. image=1,text=1,keyword=0.5")
    p.add_argument("--channel-fusion", choices=CHANNEL_FUSIONS, help="sum (weighted sum of min-max normalised "
                   "scores; the default, with weights fitted on validation) or rrf (weighted reciprocal rank)")
    p.add_argument("--queries", help="JSONL file, one {\"text\": ..., \"image\": ...} per line")
    _rescoring_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("eval", help="evaluate an index on the protocol's tasks or on your own queries")
    p.add_argument("--index", required=True)
    p.add_argument("--tasks", nargs="+", default=["title2img", "title2img_dup", "attr2img", "img2img_lq", "both2img"])
    p.add_argument("--queries", help="JSONL of {text, image, relevant: [ids]} to evaluate instead")
    p.add_argument("--max-queries", type=int, help="evaluate only the first N test queries")
    p.add_argument("--fusion", choices=FUSION_RULES)
    p.add_argument("--out", help="where to write metrics.json (default: the index directory)")
    _rescoring_args(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("serve", help="serve an index over HTTP with a web page")
    p.add_argument("--index", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--changelog", help="durable admin change log (default: INDEX.changes.jsonl beside the index "
                   "directory, "
                   "which rebuilding the index leaves alone)")
    _rescoring_args(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("demo", help="train the default system on the catalogue, index it and show searches")
    _data_args(p)
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--quick", action="store_true", help="a smaller run for a first look")
    p.add_argument("--eval-queries", type=int, help="held-out queries in the closing quality summary (default: all)")
    p.add_argument("--time-budget", type=_duration_or_none, default=argparse.SUPPRESS, metavar="DURATION",
                   help="training's wall-clock budget, trunk caching included (default 10m; 'none': 6 full epochs)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("faiss").setLevel(logging.WARNING)
    try:
        return args.func(args)
    except EnclipError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command with --resume to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
