"""What the text layer, the auxiliary attribute losses and frozen depthwise filters change in a training step.

One default head (two image stages, the text tower frozen) takes training steps of 256 catalogue items (real titles and
labels; image-trunk outputs are random, which costs the same) with: no auxiliary loss, free ("learned") class
vectors, class-name vectors over the batch's classes (``names``), class-name vectors over every class, ``names``
with the image head's depthwise filters frozen (``--frozen-depthwise``), ``names`` with the text head in bfloat16
(``--cpu-amp``, on a CPU with AMX tiles), ``names`` with the image head in bfloat16 as well, and ``names`` with the
image head's depthwise convolutions as plain ``nn.Conv2d`` (before ``SmallMapDepthwiseConv2d``), and ``names`` with the
image head compiled by ``torch.compile`` (``--compile on``; its compile time is printed apart), and ``names`` with
the last text layer trained (``--trainable-text 1``, the default until issue 14's fifteenth pass), and ``names`` with
three image stages trained (``--trainable-image 3``: the trunk is cut one stage earlier). The variants
alternate, so a machine that slows down or speeds up during the run affects them all alike;
the figure is the median over repeats of the mean of 3 steps (forward and backward, no optimiser step).

    python bench/step_cost.py [--repeats 4] [--threads 2] [--bfloat16]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from enclip.cli import SHARED_CATALOGUE  # noqa: E402
from enclip.data.catalogue import load_catalogue  # noqa: E402
from enclip.models.device import cpu_has_bfloat16_tiles  # noqa: E402
from enclip.models.ensemble import Ensemble, HeadCfg  # noqa: E402
from enclip.models.registry import BackboneCfg, create_backbone  # noqa: E402
from enclip.models.towers import SmallMapDepthwiseConv2d  # noqa: E402
from enclip.train import objective, trainer  # noqa: E402

COMPILED = "names, batch classes, image head compiled (--compile on)"
TEXT_LAYER = "names, batch classes, last text layer trained (--trainable-text 1)"
THREE_STAGES = "names, batch classes, three image stages trained (--trainable-image 3)"
COLUMNS = ("gender", "articleType", "baseColour", "usage", "season")


class EveryClassName(objective.AttributeHeads):
    """Name prototypes over every class of a column each step (the first version of ``names``)."""

    def loss(self, image, text, labels, member=None, bfloat16=False):
        total = image.new_zeros(())
        for column in self.columns:
            known = labels[column] >= 0
            weights = self.class_vectors(column, None, member, bfloat16)
            for embedding in (image, text):
                total = total + 0.5 * torch.nn.functional.cross_entropy(
                    self.scale * embedding[known] @ weights.T, labels[column][known])
        return total / len(self.columns)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(SHARED_CATALOGUE))
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bfloat16", action=argparse.BooleanOptionalAction, default=None,
                        help="time the bfloat16 variants (default: only on a CPU with AMX tiles, where they are not "
                        "emulated; emulated they take over 15 s a step)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    catalogue = load_catalogue(args.data)[0]
    ensemble = Ensemble(create_backbone(BackboneCfg()), HeadCfg()).train()
    member = ensemble.members[0]
    rows = np.random.default_rng(0).choice(len(catalogue.titles), 256, replace=False)
    features = ensemble.image_trunk(ensemble.pixels([catalogue.image(0)] * 2))
    images = torch.randn(256, *features.shape[1:]).contiguous(memory_format=torch.channels_last)
    texts = ensemble.text_features([catalogue.titles[i] for i in rows])
    classes = {c: sorted(set(catalogue.attributes[c]) - set(objective.MISSING_LABELS)) for c in COLUMNS}
    labels = {c: torch.tensor([classes[c].index(v) if v in classes[c] else -1
                               for v in (catalogue.attributes[c][i] for i in rows)]) for c in COLUMNS}
    names = {c: ensemble.text_features(values) for c, values in classes.items()}
    dim = member.encode_text(texts).shape[-1]
    batch_names = objective.AttributeHeads(dim, {}, 0, names=names)
    # the same step with the last text layer trained: token states are cached, and the layer runs every step
    layer = Ensemble(create_backbone(BackboneCfg()), HeadCfg(trainable_text=1)).train()
    layer_texts = layer.text_features([catalogue.titles[i] for i in rows])
    layer_names = objective.AttributeHeads(dim, {}, 0, names={c: layer.text_features(values)
                                                            for c, values in classes.items()})
    # three image stages: a head one stage deeper, fed the trunk's output at the earlier cut
    deeper = Ensemble(create_backbone(BackboneCfg()), HeadCfg(trainable_image=3)).train()
    deeper_features = deeper.image_trunk(deeper.pixels([catalogue.image(0)] * 2))
    deeper_images = torch.randn(256, *deeper_features.shape[1:]).contiguous(memory_format=torch.channels_last)
    # the member, captions and trunk outputs a variant steps on, where not the default head's
    own_inputs = {TEXT_LAYER: (layer.members[0], layer_texts, images),
                  THREE_STAGES: (deeper.members[0], texts, deeper_images)}
    # name -> (auxiliary heads, depthwise frozen, text head in bfloat16, image head in bfloat16, image head)
    small_map = member.image_head
    plain = copy.deepcopy(small_map).train()  # the same head (colour branch included), depthwise as nn.Conv2d
    for module in plain.modules():
        if isinstance(module, SmallMapDepthwiseConv2d):
            module.__class__ = torch.nn.Conv2d
    variants = {"no auxiliary loss": (None, False, False, False, small_map),
                "learned": (objective.AttributeHeads(dim, {c: len(v) for c, v in classes.items()}, 0), False, False,
                            False, small_map),
                "names, batch classes": (batch_names, False, False, False, small_map),
                "names, every class": (EveryClassName(dim, {}, 0, names=names), False, False, False, small_map),
                "names, batch classes, depthwise frozen": (batch_names, True, False, False, small_map),
                "names, batch classes, text head in bfloat16 (--cpu-amp)": (batch_names, False, True, False,
                                                                            small_map),
                "names, batch classes, image head in bfloat16 too": (batch_names, False, True, True, small_map),
                "names, batch classes, depthwise as nn.Conv2d (before)": (batch_names, False, False, False, plain),
                COMPILED: (batch_names, False, False, False, torch.compile(small_map)),
                TEXT_LAYER: (layer_names, False, False, False, small_map),
                THREE_STAGES: (batch_names, False, False, False, deeper.members[0].image_head)}

    def step(aux, text_bfloat16: bool, image_bfloat16: bool, member, texts, images) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=image_bfloat16):
            image = member.encode_image(images)
        text = member.encode_text(texts, bfloat16=text_bfloat16)
        loss = objective.contrastive_loss(image, text, member.logit_scale, torch.arange(256))
        if aux is not None:
            loss = loss + 0.5 * aux.loss(image, text, labels, member, text_bfloat16)
        member.zero_grad()
        loss.backward()

    if not (cpu_has_bfloat16_tiles() if args.bfloat16 is None else args.bfloat16):
        variants = {name: v for name, v in variants.items() if not (v[2] or v[3])}
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    first_call: dict[str, float] = {}
    for _ in range(args.repeats):
        for name, (aux, frozen, text_bfloat16, image_bfloat16, image_head) in variants.items():
            stepping, step_texts, step_images = own_inputs.get(name, (member, texts, images))
            stepping.image_head = image_head
            for weight in trainer.depthwise_weights(image_head):
                weight.requires_grad_(not frozen)
            started = time.perf_counter()
            # a warm-up step (the compiled variant compiles here, once)
            step(aux, text_bfloat16, image_bfloat16, stepping, step_texts, step_images)
            first_call.setdefault(name, time.perf_counter() - started)
            started = time.perf_counter()
            for _ in range(3):
                step(aux, text_bfloat16, image_bfloat16, stepping, step_texts, step_images)
            seconds[name].append((time.perf_counter() - started) / 3)
    print(f"ms per training step of 256 items, {args.threads} threads, median of {args.repeats}; "
          f"bfloat16 tiles (AMX): {'yes' if cpu_has_bfloat16_tiles() else 'no (bfloat16 rows are emulated)'}")
    print("| auxiliary loss | ms per step |\n|---|---|")
    for name, values in seconds.items():
        print(f"| {name} | {1000 * float(np.median(values)):.0f} |")
    print(f"first step of the compiled variant, compiling included: {first_call[COMPILED]:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
