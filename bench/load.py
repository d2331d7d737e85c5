"""Load test for a running enclip search service: throughput and latency under 1, 4 and 16 concurrent clients.

Each client is a thread with its own HTTP connection that sends searches back to back for a fixed time, mixing
text queries (JSON), photo uploads (multipart) and "similar" queries (JSON with an image_id). Prints a markdown
table on stdout, then what the failed requests got (an HTTP status or a connection error), level by level.

    python bench/load.py http://127.0.0.1:8000 --duration 20 --clients 1,4,16
"""

from __future__ import annotations

import argparse
import io
import itertools
import random
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
from PIL import Image, ImageDraw

from enclip.serve.app import percentile

TEXT_QUERIES = ["red dress", "black leather watch", "men casual shoes", "blue denim jeans", "white cotton t-shirt",
                "women handbag", "sports shoes", "formal shirt for men", "green kurta", "yellow top"]
KINDS = ("text", "image", "similar")


@dataclass
class Tally:
    """Latencies and errors collected by all clients of one run."""

    latencies_ms: list[float] = field(default_factory=list)
    causes: Counter = field(default_factory=Counter)  # what the failed requests got: "HTTP 500", "ReadError", ...
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def errors(self) -> int:
        return sum(self.causes.values())

    def add(self, millis: float, failure: str | None = None) -> None:
        with self.lock:
            self.latencies_ms.append(millis)
            if failure:
                self.causes[failure] += 1


def synthetic_photos(count: int, seed: int) -> list[bytes]:
    """Small JPEG 'product photos': a coloured garment-ish block on a light background."""
    rng = random.Random(seed)
    photos = []
    for _ in range(count):
        image = Image.new("RGB", (180, 240), (235, 235, 235))
        colour = tuple(rng.randrange(256) for _ in range(3))
        ImageDraw.Draw(image).rectangle([40, 40 + rng.randrange(30), 140, 200], fill=colour)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
        photos.append(buffer.getvalue())
    return photos


def sample_item_ids(url: str, k: int = 20) -> list[str]:
    """Catalogue ids to use for 'similar' queries, taken from a few text searches."""
    ids: list[str] = []
    with httpx.Client(base_url=url, timeout=60) as client:
        for text in TEXT_QUERIES[:3]:
            response = client.post("/search", json={"text": text, "k": k})
            response.raise_for_status()
            ids.extend(hit["id"] for hit in response.json()["hits"])
    return list(dict.fromkeys(ids))


def one_request(client: httpx.Client, kind: str, rng: random.Random, photos: list[bytes], ids: list[str],
                k: int) -> httpx.Response:
    if kind == "image":
        photo = ("query.jpg", rng.choice(photos), "image/jpeg")
        return client.post("/search", data={"k": str(k)}, files={"image": photo})
    if kind == "similar" and ids:
        return client.post("/search", json={"image_id": rng.choice(ids), "k": k})
    return client.post("/search", json={"text": rng.choice(TEXT_QUERIES), "k": k})


def client_loop(url: str, start: threading.Barrier, duration: float, worker: int, tally: Tally,
                photos: list[bytes], ids: list[str], k: int) -> None:
    """Send searches back to back from the moment every client is ready until `duration` has passed (at least one)."""
    rng = random.Random(worker)
    kinds = itertools.cycle(KINDS[worker % len(KINDS):] + KINDS[:worker % len(KINDS)])
    with httpx.Client(base_url=url, timeout=60) as client:
        start.wait()
        deadline = time.perf_counter() + duration
        while True:
            started = time.perf_counter()
            try:
                status = one_request(client, next(kinds), rng, photos, ids, k).status_code
                failure = None if status == 200 else f"HTTP {status}"
            except httpx.HTTPError as error:
                failure = type(error).__name__
            tally.add((time.perf_counter() - started) * 1000, failure)
            if time.perf_counter() >= deadline:
                break


def run_level(url: str, clients: int, duration: float, photos: list[bytes], ids: list[str], k: int) -> dict:
    """Run `clients` concurrent clients for `duration` seconds; returns the row of the table."""
    tally = Tally()
    start = threading.Barrier(clients + 1)  # the clock starts when every client has its connection ready
    threads = [threading.Thread(target=client_loop, args=(url, start, duration, w, tally, photos, ids, k))
               for w in range(clients)]
    for thread in threads:
        thread.start()
    start.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    latencies = tally.latencies_ms
    return {"clients": clients, "requests": len(latencies), "errors": tally.errors, "causes": dict(tally.causes),
            "throughput": len(latencies) / elapsed if elapsed else 0.0,
            "p50": percentile(latencies, 50), "p99": percentile(latencies, 99)}


def markdown_table(rows: list[dict]) -> str:
    lines = ["| clients | requests | errors | throughput (req/s) | p50 (ms) | p99 (ms) |",
             "|--------:|---------:|-------:|-------------------:|---------:|---------:|"]
    for row in rows:
        lines.append(f"| {row['clients']} | {row['requests']} | {row['errors']} | {row['throughput']:.1f} | "
                     f"{row['p50']:.1f} | {row['p99']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="base URL of a running service, e.g. http://127.0.0.1:8000")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per concurrency level")
    parser.add_argument("--clients", default="1,4,16", help="comma-separated concurrency levels")
    parser.add_argument("--k", type=int, default=10, help="hits per search")
    parser.add_argument("--seed", type=int, default=0, help="seed for the synthetic photos")
    args = parser.parse_args(argv)
    url = args.url.rstrip("/")
    health = httpx.get(url + "/health", timeout=30)
    if health.status_code != 200:
        print(f"service at {url} is not ready (GET /health -> {health.status_code})", file=sys.stderr)
        return 1
    photos, ids = synthetic_photos(8, args.seed), sample_item_ids(url)
    levels = [int(level) for level in args.clients.split(",") if level.strip()]
    rows = [run_level(url, level, args.duration, photos, ids, args.k) for level in levels]
    print(f"Load test of {url}: {args.duration:g} s per level, k={args.k}, queries cycle text / photo upload / "
          f"similar ({health.json().get('items', '?')} items)\n")
    print(markdown_table(rows))
    for row in rows:
        if row["causes"]:
            causes = ", ".join(f"{cause} × {count}" for cause, count in sorted(row["causes"].items()))
            print(f"\n{row['clients']} clients, failed requests: {causes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
