"""Why a cross-batch memory of negatives breaks training here: the embeddings drift into one direction.

Trains the default recipe's first steps twice in this process, from the same start, without and with a
cross-batch memory (``--cross-batch-memory``), and prints every 10 steps the loss and how much all the batch's
photo and title embeddings share one direction: the length of their mean (0 for embeddings spread over the sphere,
1 when all are the same vector), and the cosine between a photo's and its title's embedding. Run at commit a13f73f,
the one commit that had the memory (RESULTS.md, issue 14, twelfth pass).

    python bench/memory_drift.py --feature-cache bench/out/sweep17/feature-cache/img2-colour-txt1-views1 \
        --trunk-cache runs/demo/trunk-cache --memory 4096 --steps 60
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.recipes import DATA  # noqa: E402


def run(catalogue, feature_cache: str, trunk_cache: str, memory_size: int, steps: int) -> list[str]:
    import torch

    from enclip.models.ensemble import Ensemble
    from enclip.models.registry import create_backbone
    from enclip.train import trainer as t
    from enclip.train.memory import CrossBatchMemory
    from enclip.train.run import RunCfg, _caches, _split

    cfg = RunCfg(trunk_cache=trunk_cache)
    torch.manual_seed(0)
    ensemble = Ensemble(create_backbone(cfg.backbone), cfg.train.heads, members=1)
    train, _ = _caches(ensemble, catalogue, _split(catalogue), Path(feature_cache), cfg)
    heads, device = ensemble.members[0], ensemble.device
    aux, labels = t._attribute_heads(ensemble, heads, train, cfg.train, 0)
    groups = torch.from_numpy(t.title_groups([catalogue.titles[p] for p in train.positions]))
    batches = t._epoch_batches(t.MemberRun(np.arange(len(train)), 0, Path("unused")), 0, cfg.train.batch_size,
                               train.title_lengths())
    optimizer = torch.optim.AdamW(t._param_groups(heads, cfg.train) + [
        {"params": list(aux.parameters()), "lr": cfg.train.lr, "weight_decay": 0.0}])
    per_epoch = len(batches)  # the schedule of a 3-epoch run, as the default trains
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, t._schedule(per_epoch, 3, cfg.train.warmup, 1,
                                                                         3 * per_epoch))
    encode_image = t.training_image_encoder(heads.image_head, "off", 0)
    rng = np.random.default_rng([0, 0, 3])
    memory = CrossBatchMemory(memory_size) if memory_size else None
    heads.train()
    lines = []
    for i, rows in enumerate(batches[:steps]):
        loss = t._step(heads, encode_image, train, groups, rows, rng, optimizer, cfg.train, device, (aux, labels),
                       memory)
        scheduler.step()
        if (i + 1) % 10:
            continue
        heads.eval()
        with torch.no_grad():
            images = t._embed_images(heads, train, rows[:128], device)
            texts = heads.encode_text(train.text_batch(train.first_caption[rows[:128]], device))
        heads.train()
        lines.append(f"| {memory_size} | {i + 1} | {loss:.3f} | {images.mean(0).norm():.3f} | "
                     f"{texts.mean(0).norm():.3f} | {(images * texts).sum(1).mean():.3f} |")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--feature-cache", required=True, help="a finished default run's trunk-feature cache folder")
    parser.add_argument("--trunk-cache", required=True, help="the catalogue-wide clean trunk cache it was built with")
    parser.add_argument("--memory", type=int, default=4096, help="remembered items in the run with a memory")
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args(argv)
    from enclip.data.catalogue import load_catalogue

    catalogue = load_catalogue(args.data)[0]
    print("| memory | step | loss | length of the mean photo embedding | of the mean title embedding | "
          "cosine photo-title, same item |\n|---|---|---|---|---|---|")
    for size in (0, args.memory):
        print("\n".join(run(catalogue, args.feature_cache, args.trunk_cache, size, args.steps)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
