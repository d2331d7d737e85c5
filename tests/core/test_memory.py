"""Cross-batch memory: remembered embeddings as extra negatives, in the loss, the checkpoint and the CLI."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from enclip.cli import build_parser, run_cfg
from enclip.errors import EnclipError
from enclip.train import trainer
from enclip.train.memory import CrossBatchMemory
from enclip.train.run import train_system
from tests.conftest import tiny_run_cfg
from tests.core.test_train import _heads, interrupted_then_resumed


def _unit(n: int, d: int = 8, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


def test_the_memory_keeps_the_newest_items_first_and_forgets_the_oldest_beyond_its_size():
    memory = CrossBatchMemory(5)
    for step in range(3):  # batches of 2 items, groups 10*step + i
        image = torch.full((2, 3), float(step))
        memory.push(image, -image, torch.tensor([10 * step, 10 * step + 1]))
    assert len(memory) == 5
    assert memory.groups.tolist() == [20, 21, 10, 11, 0]
    assert memory.image[:, 0].tolist() == [2, 2, 1, 1, 0] and memory.text[:, 0].tolist() == [-2, -2, -1, -1, 0]
    image = torch.zeros(1, 3, requires_grad=True)
    memory.push(image * 2, image, torch.tensor([7]))
    assert not memory.image.requires_grad and not memory.text.requires_grad  # stored without their graph

    again = CrossBatchMemory(5)
    again.load_state_dict(memory.state_dict())
    assert torch.equal(again.image, memory.image) and again.groups.tolist() == [7, 20, 21, 10, 11]
    with pytest.raises(ValueError, match="holds 5 items, not 4"):
        CrossBatchMemory(4).load_state_dict(memory.state_dict())
    off = CrossBatchMemory(0)
    off.push(image, image, torch.tensor([1]))
    assert len(off) == 0


def test_the_loss_contrasts_each_item_with_the_batch_and_the_memory_and_same_title_items_are_positives():
    image, text, scale = _unit(4), _unit(4, seed=1), torch.tensor(2.0)
    groups = torch.tensor([0, 1, 2, 3])
    memory = CrossBatchMemory(8)
    assert trainer.contrastive_loss(image, text, scale, groups, memory) == trainer.contrastive_loss(
        image, text, scale, groups)  # empty: the batch alone
    remembered_image, remembered_text = _unit(3, seed=2), _unit(3, seed=3)
    memory.push(remembered_image, remembered_text, torch.tensor([5, 1, 6]))  # the second shares item 1's title

    # written out: item i's photo against every caption (batch, then memory); its positives are its own caption
    # and every caption with its title, sharing the target equally; the same for captions against photos
    captions, photos = torch.cat([text, remembered_text]), torch.cat([image, remembered_image])
    key_groups = [0, 1, 2, 3, 5, 1, 6]
    expected = 0.0
    for i in range(4):
        positives = [j for j, g in enumerate(key_groups) if g == groups[i]]
        for query, keys in ((image[i], captions), (text[i], photos)):
            log_p = torch.log_softmax(scale.exp() * keys @ query, dim=0)
            expected += -log_p[positives].mean() / 2 / 4
    got = trainer.contrastive_loss(image, text, scale, groups, memory)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    assert got > trainer.contrastive_loss(image, text, scale, groups)  # more negatives, a harder task


def test_a_run_with_a_memory_resumes_to_the_same_weights_as_one_never_interrupted(tmp_path, catalogue, monkeypatch):
    cfg = tiny_run_cfg(epochs=3, patience=5, cross_batch_memory=32)  # two batches of 16 remembered
    reference = _heads(train_system(catalogue, tmp_path / "straight", cfg))
    resumed = _heads(interrupted_then_resumed(catalogue, cfg, tmp_path / "resumed", monkeypatch, at_validation=2))
    for key, value in reference[0].items():
        assert torch.equal(value, resumed[0][key]), key
    plain = _heads(train_system(catalogue, tmp_path / "plain", replace(cfg, train=replace(cfg.train,
                                                                                           cross_batch_memory=0))))
    assert any(not torch.equal(value, plain[0][key]) for key, value in reference[0].items())  # the memory did work


def test_the_flag_sets_the_memory_and_a_negative_size_is_refused(tmp_path, catalogue):
    def size(*flags):
        return run_cfg(build_parser().parse_args(["train", "--out", "x", *flags])).train.cross_batch_memory

    assert (size(), size("--cross-batch-memory", "4096")) == (0, 4096)
    cfg = tiny_run_cfg(cross_batch_memory=-1)
    with pytest.raises(EnclipError, match="--cross-batch-memory is a number of remembered training items"):
        train_system(catalogue, tmp_path / "model", cfg)
    assert not (tmp_path / "model").exists()
