"""Which BM25 library serves the keyword channel: tantivy against bm25s on the catalogue's item texts.

    python bench/keywords.py [--data PATH] [--repeats 3]

Prints, for each: build seconds, query p50 (ms, 500 queries from validation titles, median of repeats), and what
one live change (an add and a delete) costs. bm25s cannot update an index, so its change is a full rebuild.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from enclip.cli import default_data  # noqa: E402
from enclip.data.catalogue import load_catalogue  # noqa: E402
from enclip.data.item_text import item_text  # noqa: E402
from enclip.data.split import split_indices  # noqa: E402
from enclip.store.keywords import KeywordIndex, build_keywords  # noqa: E402


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def p50_ms(search, queries: list[str], repeats: int) -> float:
    runs = []
    for _ in range(repeats):
        runs.append(statistics.median(1000 * timed(lambda q=q: search(q)) for q in queries))
    return statistics.median(runs)


def main(argv: list[str] | None = None) -> int:
    import bm25s

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=default_data())
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    catalogue, _ = load_catalogue(args.data, validate_images=False)
    texts = [item_text(catalogue.titles[i], {k: v[i] for k, v in catalogue.attributes.items()})
             for i in range(len(catalogue))]
    queries = [catalogue.titles[p] for p in split_indices(catalogue.ids)["val"][:500]]

    with tempfile.TemporaryDirectory() as tmp:
        built = Path(tmp) / "keywords"
        tantivy_build = timed(lambda: build_keywords(built, catalogue))
        index = KeywordIndex(built)
        tantivy_query = p50_ms(lambda q: index.search(q, 100), queries, args.repeats)
        item = {"title": "Zyxcorp Men Red Shirt", "attributes": {"gender": "Men"}}
        tantivy_change = timed(lambda: (index.add([len(catalogue)], [item]), index.remove([0])))
        index.close()

    def bm25s_build(corpus):
        retriever = bm25s.BM25()
        retriever.index(bm25s.tokenize(corpus, stopwords="en", show_progress=False), show_progress=False)
        return retriever

    bm25s_seconds = timed(lambda: bm25s_build(texts))
    retriever = bm25s_build(texts)
    bm25s_query = p50_ms(lambda q: retriever.retrieve(bm25s.tokenize([q], stopwords="en", show_progress=False),
                                                      k=100, show_progress=False), queries, args.repeats)
    bm25s_change = timed(lambda: bm25s_build(texts[1:] + [item["title"]]))
    print(f"{len(texts)} items, {len(queries)} queries, median of {args.repeats} repeats\n")
    print("| library | build (s) | query p50 (ms) | one live add + delete (s) |\n|---|---|---|---|")
    print(f"| tantivy 0.27 | {tantivy_build:.2f} | {tantivy_query:.2f} | {tantivy_change:.3f} |")
    print(f"| bm25s 0.3.16 | {bm25s_seconds:.2f} | {bm25s_query:.2f} | {bm25s_change:.3f} (full rebuild) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
