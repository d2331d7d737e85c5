"""``enclip demo``: train the default system on the catalogue, index it, show searches and held-out quality."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from enclip.data.degrade import degrade
from enclip.data.split import split_indices

log = logging.getLogger(__name__)

TEXT_QUERIES = ("navy check shirt for men", "red dress for women", "black sports shoes", "silver watch")


def _show(title: str, result) -> None:
    print(f"\n== {title}  ({result.took_ms:.0f} ms{', low confidence' if result.low_confidence else ''})")
    for rank, hit in enumerate(result.hits, 1):
        print(f"  {rank}. {hit.score:.3f}  {hit.id:>6}  {hit.title}")


def run_demo(args) -> int:
    from enclip.cli import build_parser, load_data, run_cfg
    from enclip.eval.evaluate import EvalCfg, evaluate_index
    from enclip.indexing import IndexBuildCfg, build_index
    from enclip.search import load_searcher
    from enclip.train.run import train_system

    started = time.perf_counter()
    out = Path(args.out)
    catalogue, report = load_data(args, out)
    trunk_cache = str(out / "trunk-cache")  # the catalogue's images pass the frozen trunk once, for training and index
    train_args = build_parser().parse_args(["train", "--out", str(out / "model"), "--trunk-cache", trunk_cache,
                                            *demo_train_flags(args.quick)])
    model_dir = train_system(catalogue, out / "model", run_cfg(train_args), resume=True)
    index_dir = build_index(model_dir, catalogue, out / "index", IndexBuildCfg(trunk_cache=trunk_cache),
                            resume=True, skip_report=report)
    searcher = load_searcher(index_dir)
    for query in TEXT_QUERIES:
        _show(f"text: {query!r}", searcher.search(text=query, k=5))
    _show("text + filter gender=Women: 'blue jeans'", searcher.search(text="blue jeans", k=5,
                                                                       filters={"gender": ["Women"]}))
    test = split_indices(catalogue.ids)["test"]
    position = int(test[0])
    photo = degrade(catalogue.image(position), "blur", 3, seed=0)
    _show(f"photo of held-out item {catalogue.ids[position]} ({catalogue.titles[position]}), blurred",
          searcher.search(image=photo, k=5))
    _show("same photo + text 'women'", searcher.search(image=photo, text="women", k=5))
    print("\n== quality on held-out (test) items")
    evaluate_index(index_dir, EvalCfg(tasks=("title2img", "img2img_lq"), max_queries=args.eval_queries,
                                      lq_queries=300, severities=(3,)), searcher=searcher)
    print(f"\ndemo finished in {(time.perf_counter() - started) / 60:.1f} min. Search it:")
    print(f"  enclip search --index {index_dir} --text \"navy check shirt\" --filter gender=Men")
    print(f"  enclip serve --index {index_dir}   # then open http://127.0.0.1:8000")
    return 0


def demo_train_flags(quick: bool) -> list[str]:
    """The default system's training flags (see README: why these defaults)."""
    return ["--epochs", "2"] if quick else []
