"""Do mirrored catalogue photos help? Gallery-side test-time augmentation, scored on validation titles.

Each catalogue photo's embedding is averaged with its mirror image's (left-right flip), which would cost index
time only, and validation titles search the whole catalogue (exact search, photo channel) against the plain
vectors, with a paired bootstrap interval. Two mirrors are compared: the photo flipped before the trunk (the
real one, one more trunk pass a photo), and the cached trunk feature map flipped (free, what ``--mirror`` trains
on). Each mirror alone is scored too: it says how far a flipped photo is from what the model learned.

    python bench/mirror_gallery.py --model runs/demo/model --trunk-cache runs/demo/trunk-cache
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.member_weights import K  # noqa: E402
from bench.recipes import DATA  # noqa: E402
from enclip.data.catalogue import load_catalogue  # noqa: E402
from enclip.data.split import split_indices  # noqa: E402
from enclip.embed.space import l2_normalise  # noqa: E402
from enclip.embed.trunk_cache import catalogue_image_features  # noqa: E402
from enclip.eval.bootstrap import paired_bootstrap_diff  # noqa: E402
from enclip.eval.metrics import hit_at_k  # noqa: E402
from enclip.models.ensemble import load_model  # noqa: E402


def heads_over(model, features: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """(K, n, d) member embeddings of cached trunk outputs."""
    parts = []
    for start in range(0, len(features), chunk):
        batch = torch.from_numpy(np.ascontiguousarray(features[start:start + chunk])).to(model.device, torch.float32)
        parts.append(model.encode_image_features(batch.contiguous(memory_format=torch.channels_last)).cpu().numpy())
    return np.concatenate(parts, axis=1)


def mirrored_photos(model, catalogue, chunk: int = 256) -> np.ndarray:
    """(K, n, d) member embeddings of every catalogue photo flipped left to right before the trunk."""
    parts = []
    for start in range(0, len(catalogue), chunk):
        rows = range(start, min(len(catalogue), start + chunk))
        parts.append(model.encode_pixels(model.pixels([ImageOps.mirror(catalogue.image(r)) for r in rows])).numpy())
    return np.concatenate(parts, axis=1)


def title_hits(model, gallery: np.ndarray, catalogue, positions: np.ndarray) -> np.ndarray:
    """Per title, 1 when its own item is among the top K of the (K members, n, d) gallery (mean fusion)."""
    queries = model.encode_texts([catalogue.titles[p] for p in positions])
    scores = sum(queries[m] @ gallery[m].T for m in range(len(queries)))
    top = np.argpartition(-scores, K, axis=1)[:, :K]
    ids = np.asarray(catalogue.ids)
    return hit_at_k([list(row) for row in ids[top]], [frozenset([catalogue.ids[p]]) for p in positions], K)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path, help="a trained model directory")
    parser.add_argument("--trunk-cache", required=True, help="the catalogue's trunk cache (as `enclip index` uses)")
    parser.add_argument("--data", default=str(DATA))
    args = parser.parse_args(argv)
    catalogue = load_catalogue(args.data, validate_images=False)[0]
    model, _ = load_model(args.model)
    features = catalogue_image_features(model, catalogue, Path(args.trunk_cache))
    plain = heads_over(model, features)
    flipped_maps = heads_over(model, features[..., ::-1])
    flipped_photos = mirrored_photos(model, catalogue)
    galleries = {"photo and its mirror, averaged": plain + flipped_photos,
                 "photo and its flipped feature map, averaged": plain + flipped_maps,
                 "mirror alone": flipped_photos, "flipped feature map alone": flipped_maps}
    positions = split_indices(catalogue.ids)["val"]
    base = title_hits(model, l2_normalise(plain), catalogue, positions)
    print(f"validation title2img R@{K} ({len(positions)} titles, whole catalogue, exact search)")
    print(f"  plain photos: {base.mean():.4f}")
    for name, gallery in galleries.items():
        hits = title_hits(model, l2_normalise(gallery), catalogue, positions)
        d = paired_bootstrap_diff(hits, base)
        print(f"  {name}: {hits.mean():.4f}, {d.mean:+.4f} [{d.low:+.4f}, {d.high:+.4f}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
