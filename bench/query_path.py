"""Text-query latency end to end, in-process and over HTTP on loopback, with where the time goes.

    python bench/query_path.py --index runs/demo/index [--index runs/k5/index] [--queries 200 --repeats 3]

For each index, on distinct validation titles (no query repeats within a pass): p50 of ``Searcher.search`` with
the photo channel only and with every channel; its split into query encoding and ranking; and p50 of
``POST /search`` (JSON, keep-alive client) against ``enclip serve`` running in its own process on 127.0.0.1,
photo channel and all channels, so the HTTP overhead is the difference from the same run. Each figure is the
median of ``repeats`` passes.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from enclip.data.split import split_indices  # noqa: E402
from enclip.search import load_searcher  # noqa: E402


def p50_ms(run, items, repeats: int) -> float:
    passes = []
    for _ in range(repeats):
        times = []
        for item in items:
            started = time.perf_counter()
            run(item)
            times.append(1000 * (time.perf_counter() - started))
        passes.append(statistics.median(times))
    return statistics.median(passes)


def http_p50(index: Path, texts: list[str], channels, repeats: int) -> float:
    """p50 of POST /search against ``enclip serve`` in its own process (as a shop's front end would call it)."""
    import httpx

    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "enclip.cli", "serve", "--index", str(index), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if client.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"enclip serve did not start on port {port}")
                time.sleep(0.2)
            body = {} if channels is None else {"channels": channels}
            client.post("/search", json={"text": "warm up", **body}).raise_for_status()
            return p50_ms(lambda t: client.post("/search", json={"text": t, "k": 10, **body}).raise_for_status(),
                          texts, repeats)
    finally:
        server.terminate()
        server.wait(timeout=30)


def _free_port() -> int:
    """A port of 127.0.0.1 free just now, for a server in another process (which binds it a moment later; if some
    other process takes it first, the server exits and ``http_p50`` says so)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def measure(path: Path, n: int, repeats: int) -> dict:
    searcher = load_searcher(path)
    texts = [searcher.catalogue.titles[p] for p in split_indices(searcher.catalogue.ids)["val"][:n]]
    searcher.search(text="warm up", k=10)
    vectors = {t: searcher.encode_query(text=t) for t in texts}
    return {
        "index": str(path), "items": len(searcher), "members": searcher.members, "channels": searcher.channels,
        "encode": p50_ms(lambda t: searcher.encode_query(text=t), texts, repeats),
        "rank photo": p50_ms(lambda t: searcher.search_vectors(vectors[t], k=10, text_share=1.0), texts, repeats),
        "search photo": p50_ms(lambda t: searcher.search(text=t, k=10, channels="image"), texts, repeats),
        "search all": p50_ms(lambda t: searcher.search(text=t, k=10), texts, repeats),
        "http photo": http_p50(path, texts, ["image"], repeats),
        "http all": http_p50(path, texts, None, repeats),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--index", type=Path, action="append", required=True)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    rows = [measure(path, args.queries, args.repeats) for path in args.index]
    print(f"p50 ms, median of {args.repeats} passes over {args.queries} distinct validation titles\n")
    print("| index | items | K | encode | rank (photo) | search photo | search all channels | HTTP photo "
          "| HTTP all | HTTP overhead |\n|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['index']} | {r['items']} | {r['members']} | {r['encode']:.1f} | {r['rank photo']:.1f} | "
              f"{r['search photo']:.1f} | {r['search all']:.1f} | {r['http photo']:.1f} | {r['http all']:.1f} | "
              f"{r['http all'] - r['search all']:+.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
