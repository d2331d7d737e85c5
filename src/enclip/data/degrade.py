"""Named, seeded image degradations at severities 1-5.

One implementation serves two purposes: the ``img2img_lq`` / ``both2img`` evaluation tasks (a test photo degraded
by a named degradation at a fixed severity) and training augmentation (:func:`random_degrade`), so the model is
trained on the same kinds of damage it is measured on.

Severity table (the catalogue's photos are 60x80 px, so the strongest settings are already harsh):

============  ==========================================  =====  =====  =====  =====  =====
name          parameter                                    1      2      3      4      5
============  ==========================================  =====  =====  =====  =====  =====
downscale     shrink factor (bilinear down, then back up)  1.25   1.5    2      3      4
blur          Gaussian blur radius (px)                    0.5    0.8    1.2    1.6    2.2
jpeg          JPEG quality (lower is worse)                60     40     25     15     8
noise         Gaussian noise sigma (0-255 units)           4      8      14     20     28
colour_cast   per-channel multiplicative cast strength     0.05   0.1    0.15   0.2    0.3
crop          fraction of each side kept (then resized)    0.95   0.9    0.85   0.8    0.7
============  ==========================================  =====  =====  =====  =====  =====

Severity 0 is the identity (an unchanged RGB copy). ``seed`` only matters for the random degradations (noise,
colour_cast, crop); for a fixed seed their random draws (noise field, cast direction, crop position) are the same
at every severity, so a higher severity is the same damage, only stronger.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from enclip.errors import EnclipError

logger = logging.getLogger(__name__)

DEGRADATIONS: tuple[str, ...] = ("downscale", "blur", "jpeg", "noise", "colour_cast", "crop")
MAX_SEVERITY = 5

# Parameter per severity 1..5 (index 0 is severity 1); see the module docstring's table.
SEVERITY_TABLE: dict[str, tuple[float, ...]] = {
    "downscale": (1.25, 1.5, 2.0, 3.0, 4.0),
    "blur": (0.5, 0.8, 1.2, 1.6, 2.2),
    "jpeg": (60, 40, 25, 15, 8),
    "noise": (4.0, 8.0, 14.0, 20.0, 28.0),
    "colour_cast": (0.05, 0.1, 0.15, 0.2, 0.3),
    "crop": (0.95, 0.9, 0.85, 0.8, 0.7),
}


def _downscale(image: Image.Image, factor: float, rng: np.random.Generator) -> Image.Image:
    width, height = image.size
    small = (max(1, round(width / factor)), max(1, round(height / factor)))
    return image.resize(small, Image.Resampling.BILINEAR).resize(image.size, Image.Resampling.BILINEAR)


def _blur(image: Image.Image, radius: float, rng: np.random.Generator) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(radius))


def _jpeg(image: Image.Image, quality: float, rng: np.random.Generator) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB")


def _noise(image: Image.Image, sigma: float, rng: np.random.Generator) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float32)
    noisy = pixels + sigma * rng.standard_normal(pixels.shape, dtype=np.float32)
    return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8), mode="RGB")


def _colour_cast(image: Image.Image, strength: float, rng: np.random.Generator) -> Image.Image:
    direction = rng.standard_normal(3)
    # Scale so the most affected channel moves by exactly `strength`: severity, not luck, sets the size.
    direction /= max(float(np.abs(direction).max()), 1e-12)
    gains = (1.0 + strength * direction).astype(np.float32)
    cast = np.asarray(image, dtype=np.float32) * gains
    return Image.fromarray(np.clip(np.rint(cast), 0, 255).astype(np.uint8), mode="RGB")


def _crop(image: Image.Image, keep: float, rng: np.random.Generator) -> Image.Image:
    width, height = image.size
    crop_w, crop_h = max(1, round(width * keep)), max(1, round(height * keep))
    u, v = rng.random(2)
    left, top = round(u * (width - crop_w)), round(v * (height - crop_h))
    box = (left, top, left + crop_w, top + crop_h)
    return image.resize(image.size, Image.Resampling.BILINEAR, box=box)


_APPLY: dict[str, Callable[[Image.Image, float, np.random.Generator], Image.Image]] = {
    "downscale": _downscale,
    "blur": _blur,
    "jpeg": _jpeg,
    "noise": _noise,
    "colour_cast": _colour_cast,
    "crop": _crop,
}


def _check(name: str, severity: int) -> None:
    if name not in _APPLY:
        raise EnclipError(f"unknown degradation {name!r}; choose one of {', '.join(DEGRADATIONS)}")
    is_integer = isinstance(severity, (int, np.integer)) and not isinstance(severity, bool)
    if not is_integer or not 0 <= severity <= MAX_SEVERITY:
        raise EnclipError(f"degradation severity must be an integer in 0..{MAX_SEVERITY}, got {severity!r}")


def degrade(image: Image.Image, name: str, severity: int, seed: int) -> Image.Image:
    """Return a new RGB image of the same size with degradation ``name`` applied at ``severity`` (0..5).

    The input is never modified, and the result is a function of (image, name, severity, seed) alone, so an
    evaluation query set can be regenerated exactly from the catalogue and a seed.
    """
    _check(name, severity)
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise EnclipError(f"degradation seed must be a non-negative integer, got {seed!r}")
    rgb = image.convert("RGB")  # always a copy, even when the input is already RGB
    if severity == 0:
        return rgb
    parameter = SEVERITY_TABLE[name][severity - 1]
    return _APPLY[name](rgb, parameter, np.random.default_rng(int(seed)))


@dataclass
class AugmentCfg:
    """Training-time degradation augmentation: how often, how hard and which damage."""

    p: float = 0.8  # probability of degrading a training image at all
    max_severity: int = 3  # severities drawn uniformly from 1..max_severity
    names: tuple[str, ...] = DEGRADATIONS  # which degradations may be drawn
    max_ops: int = 2  # up to this many distinct degradations chained

    def __post_init__(self) -> None:
        if not 0.0 <= self.p <= 1.0:
            raise EnclipError(f"AugmentCfg.p must be a probability in [0, 1], got {self.p}")
        if not 1 <= self.max_severity <= MAX_SEVERITY:
            raise EnclipError(f"AugmentCfg.max_severity must be in 1..{MAX_SEVERITY}, got {self.max_severity}")
        unknown = [name for name in self.names if name not in _APPLY]
        if unknown or not self.names:
            raise EnclipError(
                f"AugmentCfg.names must be a non-empty subset of {', '.join(DEGRADATIONS)}, got {self.names!r}"
            )
        if self.max_ops < 1:
            raise EnclipError(f"AugmentCfg.max_ops must be at least 1, got {self.max_ops}")


def degrades(cfg: AugmentCfg, rng: np.random.Generator) -> bool:
    """Whether :func:`random_degrade` with a generator in ``rng``'s state changes the image at all (its first draw):
    callers can skip the photos it would return unchanged."""
    return bool(rng.random() < cfg.p)


def random_degrade(image: Image.Image, cfg: AugmentCfg, rng: np.random.Generator) -> Image.Image:
    """Training augmentation: with probability ``cfg.p`` chain 1..max_ops distinct random degradations.

    Every choice (whether, which, in what order, how strong, the per-op seed) is drawn from ``rng``, so a seeded
    data loader reproduces the same augmented images. Returns a new RGB image of the same size.
    """
    if not degrades(cfg, rng):
        return image.convert("RGB")
    names = tuple(dict.fromkeys(cfg.names))  # distinct, in the configured order
    n_ops = int(rng.integers(1, min(cfg.max_ops, len(names)) + 1))
    out = image
    for index in rng.choice(len(names), size=n_ops, replace=False):
        severity = int(rng.integers(1, cfg.max_severity + 1))
        out = degrade(out, names[index], severity, seed=int(rng.integers(0, 2**31 - 1)))
    return out
