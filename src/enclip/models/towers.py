"""Split each CLIP tower into a frozen *trunk* and a trainable *head*.

Fine-tuning on a CPU is affordable only when the frozen part of a tower runs once: the trunk's output is cached
for the whole catalogue, and every epoch (and every ensemble member) trains only the head on top of it. At query
time the trunk also runs once and K member heads share it, which is what bounds the cost of an ensemble.

``trainable`` counts blocks from the top of a tower: 0 trains the projection only, N the last N blocks (timm
stages, transformer layers) plus the projection, and ``ALL`` the whole tower (the trunk is then the identity).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from enclip.errors import EnclipError

ALL = -1  # ``trainable`` value meaning: train the whole tower


class Identity(nn.Module):
    def forward(self, *inputs):
        return inputs[0] if len(inputs) == 1 else inputs


@dataclass
class TowerSplit:
    """A tower cut in two: ``head(trunk(x)) == tower(x)``."""

    trunk: nn.Module  # frozen, shared by every ensemble member
    head: nn.Module  # trainable, one per member
    blocks: int  # number of blocks the tower has (for error messages and manifests)


class _TimmTrunk(nn.Module):
    def __init__(self, net: nn.Module, n_stages: int):
        super().__init__()
        self.stem = nn.Sequential(net.conv_stem, net.bn1)
        self.stages = nn.Sequential(*list(net.blocks)[:n_stages])

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(pixels))


class _TimmHead(nn.Module):
    def __init__(self, net: nn.Module, first_stage: int, projection: nn.Module):
        super().__init__()
        self.stages = nn.Sequential(*list(net.blocks)[first_stage:])
        self.conv_head = net.conv_head
        self.bn2 = net.bn2
        self.pool = net.global_pool
        self.projection = projection

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.bn2(self.conv_head(self.stages(features)))
        return self.projection(self.pool(x))


class _TimmPooledHead(nn.Module):
    """Projection-only head: the trunk already returns pooled features."""

    def __init__(self, projection: nn.Module):
        super().__init__()
        self.projection = projection

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.projection(features)


def split_timm_tower(visual: nn.Module, trainable: int) -> TowerSplit:
    """Split an open_clip ``TimmModel`` over an EfficientNet-style net (stem, ``blocks`` stages, head conv)."""
    net = visual.trunk
    if not all(hasattr(net, name) for name in ("conv_stem", "bn1", "blocks", "conv_head", "bn2", "global_pool")):
        raise EnclipError(
            f"cannot split image tower {type(net).__name__} into trunk and head; "
            "train it with --trainable all or --trainable 0 instead"
        )
    n = len(net.blocks)
    if trainable == ALL:
        return TowerSplit(Identity(), visual, n)
    if trainable > n:
        raise EnclipError(f"image tower has {n} stages; --trainable must be at most {n} (or 'all')")
    if trainable == 0:
        trunk = nn.Sequential(_TimmTrunk(net, n), net.conv_head, net.bn2, net.global_pool)
        return TowerSplit(trunk, _TimmPooledHead(visual.head), n)
    return TowerSplit(_TimmTrunk(net, n - trainable), _TimmHead(net, n - trainable, visual.head), n)


class _HFTrunk(nn.Module):
    """Embeddings and the first layers of a Hugging Face encoder; returns (hidden states, attention mask)."""

    def __init__(self, text: nn.Module, n_layers: int):
        super().__init__()
        self.config = text.transformer.config  # the loaded model's config knows its attention implementation
        self.embeddings = text.transformer.embeddings
        self.layers = nn.ModuleList(list(_hf_layers(text))[:n_layers])

    def forward(self, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = (token_ids != self.config.pad_token_id).long()
        hidden = self.embeddings(input_ids=token_ids)
        return _run_layers(self.layers, self.config, hidden, mask), mask


class _HFHead(nn.Module):
    def __init__(self, text: nn.Module, first_layer: int):
        super().__init__()
        self.config = text.transformer.config  # the loaded model's config knows its attention implementation
        self.layers = nn.ModuleList(list(_hf_layers(text))[first_layer:])
        self.pooler = text.pooler
        self.projection = text.proj

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = _run_layers(self.layers, self.config, hidden, mask)
        return self.projection(self.pooler(_Output(hidden), mask))


class _Output:
    """The one attribute open_clip's poolers read from a transformers output."""

    def __init__(self, last_hidden_state: torch.Tensor):
        self.last_hidden_state = last_hidden_state


def _hf_layers(text: nn.Module) -> nn.ModuleList:
    encoder = getattr(text.transformer, "encoder", text.transformer)
    layers = getattr(encoder, "layer", None)
    if layers is None:
        raise EnclipError(
            f"cannot split text tower {type(text.transformer).__name__}; use --trainable all or --trainable 0"
        )
    return layers


def _run_layers(layers: nn.ModuleList, config, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if len(layers) == 0:
        return hidden
    from transformers.masking_utils import create_bidirectional_mask

    full_mask = create_bidirectional_mask(config=config, inputs_embeds=hidden, attention_mask=mask)
    for layer in layers:
        out = layer(hidden, full_mask)
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden


class _HFFullTrunk(nn.Module):
    """Frozen whole encoder with its pooler; the head is the projection only."""

    def __init__(self, text: nn.Module):
        super().__init__()
        self.inner = _HFTrunk(text, len(_hf_layers(text)))
        self.pooler = text.pooler

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        hidden, mask = self.inner(token_ids)
        return self.pooler(_Output(hidden), mask)


class _Projection(nn.Module):
    def __init__(self, projection: nn.Module):
        super().__init__()
        self.projection = projection

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.projection(pooled)


def split_hf_text_tower(text: nn.Module, trainable: int) -> TowerSplit:
    """Split an open_clip ``HFTextEncoder`` (BERT-like: ``embeddings`` + ``encoder.layer``)."""
    n = len(_hf_layers(text))
    if trainable == ALL:
        return TowerSplit(Identity(), text, n)
    if trainable > n:
        raise EnclipError(f"text tower has {n} layers; --trainable must be at most {n} (or 'all')")
    if trainable == 0:
        return TowerSplit(_HFFullTrunk(text), _Projection(text.proj), n)
    return TowerSplit(_HFTrunk(text, n - trainable), _HFHead(text, n - trainable), n)


class _Encode(nn.Module):
    """Calls one encode method of a whole model; registers the model so its parameters can be trained."""

    def __init__(self, model: nn.Module, method: str):
        super().__init__()
        self.model = model
        self.method = method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self.model, self.method)(x)


class _Adapter(nn.Module):
    """A trainable residual linear adapter on a frozen tower's output, initialised to the identity."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, dim)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.linear(x)


def split_generic(model: nn.Module, method: str, trainable: int, dim: int) -> TowerSplit:
    """Any model with ``encode_image``/``encode_text``: train it whole, or freeze it and train an adapter on top."""
    if trainable == ALL:
        return TowerSplit(Identity(), _Encode(model, method), 0)
    if trainable != 0:
        raise EnclipError(
            f"{type(model).__name__} cannot be partly unfrozen by enclip; use --trainable 0 (adapter) or 'all'"
        )
    return TowerSplit(_Encode(model, method), _Adapter(dim), 0)


COLOUR_CHANNELS = 3  # the photo's RGB, which :class:`ColourTrunk` appends to a trunk output
COLOUR_GRID = 6  # the thumbnail :class:`ColourHead` reads: 6x6 cells (the 96-pixel input's trunk output grid)


class ColourTrunk(nn.Module):
    """A frozen trunk whose output also carries the photo's colours, so that one cached tensor holds both: a feature
    map gets the input pixels average-pooled to its grid as :data:`COLOUR_CHANNELS` more channels; a pooled feature
    vector gets the flattened :data:`COLOUR_GRID` x :data:`COLOUR_GRID` thumbnail appended.

    An ImageNet trunk is trained to recognise objects whatever their colour, so a head fine-tuned on top of it is
    slow to learn what colour a product is, while a thumbnail states it outright. :class:`ColourHead` reads it.
    """

    def __init__(self, trunk: nn.Module):
        super().__init__()
        self.trunk = trunk

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        features = self.trunk(pixels)
        if features.dim() == 4:
            thumbnail = F.adaptive_avg_pool2d(pixels, features.shape[-2:])
        else:
            thumbnail = F.adaptive_avg_pool2d(pixels, COLOUR_GRID).flatten(1)
        return torch.cat([features, thumbnail.to(features.dtype)], dim=1)


class ColourHead(nn.Module):
    """A trainable head over :class:`ColourTrunk` outputs: the wrapped head on the trunk's own features, plus a small
    MLP of the colour thumbnail added to its embedding. The MLP's last layer starts at zero, so training starts from
    the wrapped head's own outputs."""

    def __init__(self, head: nn.Module, dim: int, hidden: int = 256):
        super().__init__()
        self.head = head
        self.colour_adapter = nn.Sequential(nn.Linear(COLOUR_CHANNELS * COLOUR_GRID ** 2, hidden), nn.GELU(),
                                            nn.Linear(hidden, dim))
        nn.init.zeros_(self.colour_adapter[-1].weight)
        nn.init.zeros_(self.colour_adapter[-1].bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        maps = without_colour(features)
        thumbnail = features[:, maps.shape[1]:]
        if features.dim() == 4:
            thumbnail = F.adaptive_avg_pool2d(thumbnail, COLOUR_GRID)
        return self.head(maps) + self.colour_adapter(thumbnail.flatten(1)).to(maps.dtype)


def without_colour(features):
    """A :class:`ColourTrunk` output (tensor or array, maps or pooled vectors) without the thumbnail it appended."""
    return features[:, :-COLOUR_CHANNELS] if features.ndim == 4 else features[:, :-COLOUR_CHANNELS * COLOUR_GRID ** 2]


def with_colour(split: TowerSplit, probe: torch.Tensor) -> TowerSplit:
    """``split`` with a colour branch (:class:`ColourTrunk`, :class:`ColourHead`); ``probe`` is one preprocessed
    image batch, run once through the head (in eval mode) to learn its embedding size."""
    with torch.no_grad():
        features = split.trunk(probe)
    if features.dim() not in (2, 4):
        raise EnclipError("the colour branch needs an image trunk that outputs a feature map or a pooled vector, "
                          f"and this one outputs shape {tuple(features.shape)}: train the image tower from "
                          "another block (--trainable-image) or turn the branch off (--no-colour-branch)")
    return TowerSplit(ColourTrunk(split.trunk), ColourHead(split.head, _embedding_size(split.head, features)),
                      split.blocks)


def _embedding_size(head: nn.Module, features) -> int:
    """The size of ``head``'s embedding of trunk ``features`` (a tensor, or a tuple of them), run once in eval mode;
    the head's training mode is restored."""
    training = head.training
    with torch.no_grad():
        out = head.eval()(*features) if isinstance(features, tuple) else head.eval()(features)
    head.train(training)
    return out.shape[-1]


class AdaptedHead(nn.Module):
    """A head followed by a residual two-layer MLP on its output embedding (CLIP-Adapter; Gao et al. 2021,
    arXiv 2110.04544). The MLP's last layer starts at zero, so training starts from the wrapped head's outputs.

    Over a frozen text tower (``--trainable-text 0``, whose head is a linear projection) it gives the text side some
    non-linear capacity for the cost of two small matrix products, where a trained transformer layer costs half of a
    training step on the CPU. One width (512) was measured, and gave nothing back on validation titles (RESULTS.md,
    issue 14, fifteenth pass)."""

    def __init__(self, head: nn.Module, dim: int, hidden: int):
        super().__init__()
        self.head = head
        self.text_adapter = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        nn.init.zeros_(self.text_adapter[-1].weight)
        nn.init.zeros_(self.text_adapter[-1].bias)

    def forward(self, *features: torch.Tensor) -> torch.Tensor:
        out = self.head(*features)
        return out + self.text_adapter(out).to(out.dtype)


def with_text_adapter(split: TowerSplit, probe: torch.Tensor, hidden: int) -> TowerSplit:
    """``split`` (a text tower's) with an :class:`AdaptedHead` of ``hidden`` units; ``probe`` is one batch of token
    ids, run once through the trunk and head (in eval mode) to learn the embedding size."""
    with torch.no_grad():
        features = split.trunk(probe)
    return TowerSplit(split.trunk, AdaptedHead(split.head, _embedding_size(split.head, features), hidden),
                      split.blocks)


TOKEN_CODE_BASE = 256  # a token id travels as two float digits below this base: exact in float16 caches


class TokenBagTrunk(nn.Module):
    """A frozen text trunk whose pooled output also carries the caption's token ids, so that one cached tensor holds
    both (as :class:`ColourTrunk` does for photos). The ids are padded or cut to ``length`` columns, the framing
    tokens every caption has (``ignore_ids``: start, end, padding) become ``pad_id``, and each id is written as two
    base-:data:`TOKEN_CODE_BASE` digits, which float16 holds exactly. :class:`TokenBagHead` reads them."""

    def __init__(self, trunk: nn.Module, length: int, pad_id: int, ignore_ids: Sequence[int]):
        super().__init__()
        self.trunk = trunk
        self.length = length
        self.pad_id = pad_id
        self._ignore = torch.tensor(sorted(set(ignore_ids) | {pad_id}))  # not a buffer: the trunk is never saved

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        pooled = self.trunk(token_ids)
        ids = token_ids[:, : self.length]
        ids = F.pad(ids, (0, self.length - ids.shape[1]), value=self.pad_id)
        ids = torch.where(torch.isin(ids, self._ignore.to(ids.device)), self.pad_id, ids)
        digits = torch.cat([ids // TOKEN_CODE_BASE, ids % TOKEN_CODE_BASE], dim=1)
        return torch.cat([pooled, digits.to(pooled.dtype)], dim=1)


class TokenBagHead(nn.Module):
    """A trainable head over :class:`TokenBagTrunk` outputs: the wrapped head on the pooled features, plus a learned
    low-rank vector per token (the mean over the caption's tokens, mapped into the joint space) added to its
    embedding. The map starts at zero, so training starts from the wrapped head's own outputs.

    A frozen sentence encoder blurs the words that tell near-identical products apart (a brand, a colour, a cut); a
    vector of its own per token lets training give each word what the photos say about it, for the cost of one
    embedding-bag lookup a caption."""

    def __init__(self, head: nn.Module, dim: int, vocab_size: int, length: int, pad_id: int, rank: int):
        super().__init__()
        self.head = head
        self.length = length
        self.token_bag = nn.EmbeddingBag(vocab_size, rank, mode="mean", padding_idx=pad_id)
        self.token_adapter = nn.Linear(rank, dim, bias=False)
        nn.init.zeros_(self.token_adapter.weight)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        pooled, digits = features[:, : -2 * self.length], features[:, -2 * self.length :]
        ids = (digits[:, : self.length].float() * TOKEN_CODE_BASE + digits[:, self.length :].float()).round().long()
        out = self.head(pooled)
        return out + self.token_adapter(self.token_bag(ids)).to(out.dtype)


def with_token_bag(split: TowerSplit, tokenizer, pad_id: int, rank: int) -> TowerSplit:
    """``split`` (a text tower's, with a pooled trunk output) with a :class:`TokenBagHead` of ``rank``; the
    vocabulary, the caption length and the framing tokens come from ``tokenizer`` itself."""
    probe = tokenizer([""])
    with torch.no_grad():
        pooled = split.trunk(probe)
    if not isinstance(pooled, torch.Tensor) or pooled.dim() != 2:
        raise EnclipError("the token bag needs a text trunk that outputs pooled vectors (--trainable-text 0); "
                          "train the text tower's projection only or leave out --token-bag")
    vocab_size = _vocab_size(tokenizer)
    if vocab_size > TOKEN_CODE_BASE ** 2:
        raise EnclipError(f"the token bag holds token ids below {TOKEN_CODE_BASE ** 2}, and this tokenizer has "
                          f"{vocab_size}; leave out --token-bag")
    length = probe.shape[1]
    framing = [int(i) for i in probe[0].unique()]  # what even an empty caption holds: start, end, padding
    trunk = TokenBagTrunk(split.trunk, length, pad_id, framing)
    head = TokenBagHead(split.head, _embedding_size(split.head, pooled), vocab_size, length, pad_id, rank)
    return TowerSplit(trunk, head, split.blocks)


def _vocab_size(tokenizer) -> int:
    inner = getattr(tokenizer, "tokenizer", None)  # open_clip's HFTokenizer wraps a transformers tokenizer
    if inner is not None:
        return len(inner)
    if hasattr(tokenizer, "vocab_size"):  # open_clip's SimpleTokenizer
        return int(tokenizer.vocab_size)
    raise EnclipError(f"cannot tell the vocabulary size of tokenizer {type(tokenizer).__name__}; "
                      "leave out --token-bag")


def clone_head(head: nn.Module) -> nn.Module:
    """An independent copy of a head (ensemble members start from the same pretrained weights), its depthwise
    convolutions run as :class:`SmallMapDepthwiseConv2d`."""
    return small_map_depthwise(copy.deepcopy(head))


class SmallMapDepthwiseConv2d(nn.Conv2d):
    """A depthwise convolution that, on a feature map not much larger than its kernel, runs as a short sum of
    per-channel products: each output pixel is a weighted sum of every input pixel, with the weights gathered from
    the filter. Same parameters and state-dict keys as ``nn.Conv2d``, same outputs up to float rounding.

    At the top of the image tower (3x3 maps, 5x5 filters, padding 2) the CPU's convolution backward spent about
    260 ms per such layer on 256 items, more than the whole head's forward; the sum's backward is elementwise.
    Larger maps, dilation or other padding modes take ``nn.Conv2d``'s path.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        kh, kw = self.kernel_size
        if (height * width > 2 * kh * kw or self.dilation != (1, 1) or self.padding_mode != "zeros"
                or isinstance(self.padding, str)):
            return super().forward(x)
        index, (out_h, out_w) = self._gather_index(height, width, x.device)
        channels = self.weight.shape[0]
        taps = torch.cat([self.weight.reshape(channels, kh * kw).T, self.weight.new_zeros(1, channels)])
        matrix = taps[index]  # (out pixels, in pixels, C); pairs the filter does not reach get the zero tap
        pixels = x.permute(0, 2, 3, 1).reshape(x.shape[0], height * width, 1, channels)  # (N, in pixels, 1, C)
        # a sum over the few input pixels, channel-wise (a batched matmul over C would run C tiny products);
        # unbind, not indexing, so that the backward stacks the pixels' gradients once
        out = None
        for column, taps_of_column in zip(pixels.unbind(1), matrix.unbind(1)):
            out = column * taps_of_column if out is None else out + column * taps_of_column
        if self.bias is not None:
            out = out + self.bias
        # (N, out pixels, C) memory read as (N, C, H, W): channels-last, as the surrounding layers run
        return out.contiguous().reshape(x.shape[0], out_h, out_w, channels).permute(0, 3, 1, 2)

    def _gather_index(self, height: int, width: int, device: torch.device):
        key = (height, width, device)
        cache = self.__dict__.setdefault("_index_cache", {})  # not a buffer: no state-dict entry
        if key not in cache:
            (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
            out_h, out_w = (height + 2 * ph - kh) // sh + 1, (width + 2 * pw - kw) // sw + 1
            oi, oj, p, q = torch.meshgrid(torch.arange(out_h), torch.arange(out_w), torch.arange(height),
                                          torch.arange(width), indexing="ij")
            ki, kj = p - oi * sh + ph, q - oj * sw + pw
            reached = (ki >= 0) & (ki < kh) & (kj >= 0) & (kj < kw)
            index = torch.where(reached, ki * kw + kj, kh * kw).reshape(out_h * out_w, height * width)
            cache[key] = (index.to(device), (out_h, out_w))
        return cache[key]


def small_map_depthwise(module: nn.Module) -> nn.Module:
    """Swap, in place, every plain depthwise ``nn.Conv2d`` under ``module`` for a :class:`SmallMapDepthwiseConv2d`
    holding the same parameters; returns ``module``."""
    for name, child in list(module.named_modules()):
        if type(child) is nn.Conv2d and child.groups == child.in_channels == child.out_channels > 1:
            swapped = SmallMapDepthwiseConv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                                              child.padding, child.dilation, child.groups, child.bias is not None,
                                              child.padding_mode, device="meta")
            swapped.weight, swapped.bias = child.weight, child.bias
            _replace(module, name, swapped)
    return module


def fold_batch_norms(trunk: nn.Module, probe: torch.Tensor) -> nn.Module:
    """An inference copy of a frozen trunk with each batch norm folded into the convolution that feeds it.

    A frozen trunk's batch norms are fixed affine maps, so each can be merged into its convolution's weights and bias
    (``torch.nn.utils.fusion.fuse_conv_bn_eval``); what follows the norm (timm's ``BatchNormAct2d`` activation)
    stays. On the EfficientNet trunk, batch norm took as long as the convolutions themselves on the CPU, and folding
    makes the trunk about 1.7x faster. Pairs are found by running ``probe`` once: a norm folds when its input is
    exactly the output of the convolution that ran just before it. Outputs equal the original's up to float
    rounding, a kernel-level difference like another thread count, so cache keys and fingerprints (taken from the
    weights as loaded) stay valid. A trunk without such pairs (a ViT, the identity) is returned as it is.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    calls: list[tuple[nn.Module, torch.Tensor]] = []
    hooks = [module.register_forward_hook(lambda m, i, o: calls.append((m, o))) if isinstance(module, nn.Conv2d)
             else module.register_forward_pre_hook(lambda m, i: calls.append((m, i[0])))
             for module in trunk.modules() if isinstance(module, (nn.Conv2d, nn.BatchNorm2d))]
    try:
        with torch.no_grad():
            trunk(probe)
    finally:
        for hook in hooks:
            hook.remove()
    pairs = [(conv, norm) for (conv, out), (norm, given) in zip(calls, calls[1:])
             if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d) and given is out]
    if not pairs:
        return trunk
    names = {module: name for name, module in trunk.named_modules()}
    folded = copy.deepcopy(trunk).eval()
    for conv, norm in pairs:
        _replace(folded, names[conv], fuse_conv_bn_eval(folded.get_submodule(names[conv]), norm))
        after = [getattr(norm, part) for part in ("drop", "act") if isinstance(getattr(norm, part, None), nn.Module)]
        _replace(folded, names[norm], nn.Sequential(*after) if after else nn.Identity())
    return folded.requires_grad_(False)


def _replace(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attribute = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attribute, module)
