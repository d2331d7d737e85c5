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
from PIL import ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.member_weights import K, MemberScores  # noqa: E402
from enclip.cli import SHARED_CATALOGUE  # noqa: E402
from enclip.data.catalogue import load_catalogue  # noqa: E402
from enclip.data.split import split_indices  # noqa: E402
from enclip.embed.catalogue import encode_trunk_outputs  # noqa: E402
from enclip.embed.space import concat_members, l2_normalise  # noqa: E402
from enclip.embed.trunk_cache import catalogue_image_features  # noqa: E402
from enclip.eval.bootstrap import paired_bootstrap_diff  # noqa: E402
from enclip.models.ensemble import load_model  # noqa: E402


def mirrored_photos(model, catalogue, chunk: int = 256) -> np.ndarray:
    """(n, K*d) embeddings of every catalogue photo flipped left to right before the trunk."""
    parts = []
    for start in range(0, len(catalogue), chunk):
        rows = range(start, min(len(catalogue), start + chunk))
        pixels = model.pixels([ImageOps.mirror(catalogue.image(r)) for r in rows])
        parts.append(concat_members(model.encode_pixels(pixels).cpu().numpy()))
    return np.concatenate(parts)


def unit_members(stored: np.ndarray, members: int) -> np.ndarray:
    """(n, K*d) rows with each member's part scaled back to unit length (after a sum of two views)."""
    return l2_normalise(stored.reshape(len(stored), members, -1)).reshape(len(stored), -1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path, help="a trained model directory")
    parser.add_argument("--trunk-cache", required=True, help="the catalogue's trunk cache (as `enclip index` uses)")
    parser.add_argument("--data", default=str(SHARED_CATALOGUE))
    args = parser.parse_args(argv)
    catalogue = load_catalogue(args.data, validate_images=False)[0]
    model, _ = load_model(args.model)
    members = len(model)
    features = catalogue_image_features(model, catalogue, Path(args.trunk_cache))
    plain = encode_trunk_outputs(model, features)
    flipped_maps = encode_trunk_outputs(model, features[..., ::-1])
    flipped_photos = mirrored_photos(model, catalogue)
    galleries = {"photo and its mirror, averaged": plain + flipped_photos,
                 "photo and its flipped feature map, averaged": plain + flipped_maps,
                 "mirror alone": flipped_photos, "flipped feature map alone": flipped_maps}
    positions = split_indices(catalogue.ids)["val"]
    titles, own = [catalogue.titles[p] for p in positions], [catalogue.ids[p] for p in positions]
    equal = np.full(members, 1 / members)

    def hits(stored: np.ndarray) -> np.ndarray:
        return MemberScores(model, unit_members(stored, members), catalogue.ids, titles, own).hits(equal)

    base = hits(plain)
    print(f"validation title2img R@{K} ({len(positions)} titles, whole catalogue, exact search)")
    print(f"  plain photos: {base.mean():.4f}")
    for name, gallery in galleries.items():
        found = hits(gallery)
        d = paired_bootstrap_diff(found, base)
        print(f"  {name}: {found.mean():.4f}, {d.mean:+.4f} [{d.low:+.4f}, {d.high:+.4f}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
