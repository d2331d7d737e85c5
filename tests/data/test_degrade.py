"""Named degradations: shape, purity, determinism, monotone severity; and the training augmentation."""

import numpy as np
import pytest
from PIL import Image

from enclip.data.degrade import DEGRADATIONS, AugmentCfg, degrade, random_degrade
from enclip.errors import EnclipError

RANDOM_ONES = ("noise", "colour_cast", "crop")
SIZE = (60, 80)  # the catalogue's photo size (width, height)


def textured_image(seed: int) -> Image.Image:
    """Smooth random colour blobs plus fine grain: structure for blur/crop to destroy, detail for JPEG."""
    rng = np.random.default_rng(seed)
    blobs = rng.integers(0, 256, (10, 8, 3), dtype=np.uint8)
    coarse = Image.fromarray(blobs).resize(SIZE, Image.Resampling.BICUBIC)
    grain = rng.normal(0.0, 12.0, (SIZE[1], SIZE[0], 3))
    return Image.fromarray(np.clip(np.asarray(coarse, dtype=np.float64) + grain, 0, 255).astype(np.uint8))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


@pytest.mark.parametrize("name", DEGRADATIONS)
def test_returns_a_new_rgb_image_of_the_same_size_and_leaves_the_input_alone(name):
    image = textured_image(0)
    before = image.tobytes()
    for severity in range(6):
        out = degrade(image, name, severity, seed=1)
        assert out is not image
        assert out.mode == "RGB" and out.size == SIZE
    assert image.tobytes() == before


@pytest.mark.parametrize("name", DEGRADATIONS)
def test_severity_zero_is_an_unchanged_copy(name):
    image = textured_image(1)
    out = degrade(image, name, 0, seed=3)
    assert out is not image
    assert np.array_equal(pixels(out), pixels(image))


@pytest.mark.parametrize("name", DEGRADATIONS)
def test_deterministic_for_image_name_severity_and_seed(name):
    image = textured_image(2)
    assert np.array_equal(pixels(degrade(image, name, 3, seed=5)), pixels(degrade(image, name, 3, seed=5)))


@pytest.mark.parametrize("name", RANDOM_ONES)
def test_random_degradations_depend_on_the_seed(name):
    image = textured_image(3)
    assert not np.array_equal(pixels(degrade(image, name, 3, seed=5)), pixels(degrade(image, name, 3, seed=6)))


@pytest.mark.parametrize("name", sorted(set(DEGRADATIONS) - set(RANDOM_ONES)))
def test_fixed_degradations_ignore_the_seed(name):
    image = textured_image(3)
    assert np.array_equal(pixels(degrade(image, name, 3, seed=5)), pixels(degrade(image, name, 3, seed=6)))


@pytest.mark.parametrize("name", DEGRADATIONS)
@pytest.mark.parametrize("image_seed", [0, 1, 2])
def test_damage_grows_with_severity(name, image_seed):
    image = textured_image(image_seed)
    damage = [
        np.abs(pixels(degrade(image, name, severity, seed=image_seed + 10)) - pixels(image)).mean()
        for severity in range(6)
    ]
    assert damage[0] == 0.0
    assert all(weaker < stronger for weaker, stronger in zip(damage, damage[1:])), damage


def test_non_rgb_input_is_converted():
    grey = textured_image(4).convert("L")
    out = degrade(grey, "noise", 2, seed=0)
    assert out.mode == "RGB" and out.size == SIZE and grey.mode == "L"


def test_bad_name_severity_or_seed_raise_enclip_error_listing_valid_values():
    image = textured_image(5)
    with pytest.raises(EnclipError, match="downscale, blur, jpeg, noise, colour_cast, crop"):
        degrade(image, "pixelate", 1, seed=0)
    for severity in (-1, 6, 1.5, True):
        with pytest.raises(EnclipError, match="0..5"):
            degrade(image, "blur", severity, seed=0)
    with pytest.raises(EnclipError, match="seed"):
        degrade(image, "noise", 1, seed=-1)


def test_random_degrade_is_reproducible_from_the_generator():
    image = textured_image(6)
    cfg = AugmentCfg(p=1.0, max_severity=5, max_ops=3)
    first = [pixels(random_degrade(image, cfg, np.random.default_rng(9))) for _ in range(2)]
    assert np.array_equal(first[0], first[1])
    rng = np.random.default_rng(9)
    draws = [pixels(random_degrade(image, cfg, rng)) for _ in range(5)]
    assert any(not np.array_equal(draws[0], other) for other in draws[1:])


def test_random_degrade_respects_probability():
    image = textured_image(7)
    untouched = random_degrade(image, AugmentCfg(p=0.0), np.random.default_rng(0))
    assert untouched is not image and np.array_equal(pixels(untouched), pixels(image))
    rng = np.random.default_rng(1)
    for _ in range(10):
        out = random_degrade(image, AugmentCfg(p=1.0), rng)
        assert out.size == SIZE and out.mode == "RGB"
        assert not np.array_equal(pixels(out), pixels(image))


def test_random_degrade_draws_only_allowed_names_and_severities():
    image = textured_image(8)
    cfg = AugmentCfg(p=1.0, names=("blur",), max_severity=2, max_ops=2)  # blur ignores the seed
    allowed = [pixels(degrade(image, "blur", severity, seed=0)) for severity in (1, 2)]
    rng = np.random.default_rng(2)
    seen = set()
    for _ in range(20):
        out = pixels(random_degrade(image, cfg, rng))
        matches = [severity for severity, ref in zip((1, 2), allowed) if np.array_equal(out, ref)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert seen == {1, 2}


BAD_AUGMENT = [
    {"p": 1.5},
    {"max_severity": 0},
    {"max_severity": 6},
    {"names": ("smudge",)},
    {"names": ()},
    {"max_ops": 0},
]


@pytest.mark.parametrize("overrides", BAD_AUGMENT)
def test_augment_cfg_rejects_bad_values(overrides):
    with pytest.raises(EnclipError):
        AugmentCfg(**overrides)
