"""The negative families: seeded, the right shape and colour for each exam, and each what it says it is."""

from __future__ import annotations

import numpy as np
import pytest

from models.training import negatives as ng
from models.training.images import decode_rgb


@pytest.fixture(scope="module")
def exam_images(datasets):
    """A few real training images of each exam, decoded as the trainers decode them."""
    chest = sorted((datasets / "chest-xray" / "train" / "NORMAL").glob("*.jpeg"))[:4]
    skin = sorted((datasets / "dermatology" / "train" / "nv").glob("*.jpg"))[:4]
    return [decode_rgb(p) for p in chest], [decode_rgb(p) for p in skin]


@pytest.mark.parametrize("exam", [ng.CHEST_EXAM, ng.SKIN_EXAM])
def test_every_family_makes_the_same_uint8_rgb_images_from_the_same_seed(exam, exam_images):
    chest, skin = exam_images
    own, other = (chest, skin) if exam == ng.CHEST_EXAM else (skin, chest)
    for family in ng.families(exam, own=own, other=other):
        first = ng.generate(family, 0, 3, 64)
        assert first.shape == (3, 64, 64, 3) and first.dtype == np.uint8, family.name
        assert np.array_equal(first, ng.generate(family, 0, 3, 64)), family.name
        assert not np.array_equal(first, ng.generate(family, 1, 3, 64)), family.name
        assert first.std() > 5, f"{family.name}: a flat image teaches nothing"
        if exam == ng.CHEST_EXAM:  # the colour gate refuses anything else before the model runs
            assert np.array_equal(first[..., 0], first[..., 1]) and np.array_equal(first[..., 1], first[..., 2])


def test_each_exam_gets_its_own_families(exam_images):
    chest, skin = exam_images
    names = {exam: {f.name for f in ng.families(exam, own=own, other=other)}
             for exam, own, other in ((ng.CHEST_EXAM, chest, skin), (ng.SKIN_EXAM, skin, chest))}
    generic = {"documents", "textures", "dead_leaves", "cells", "scenes", "fundus", "dicom", "other_exam", "inverted",
               "tiny_crops"}
    assert names[ng.CHEST_EXAM] == generic | {"rotated"}  # a lesion has no "up": no rotations for the skin exam
    assert names[ng.SKIN_EXAM] == generic | {"film_photos"}
    assert {f.name for f in ng.families(ng.SKIN_EXAM)} == generic - {"other_exam", "inverted", "tiny_crops"}
    with pytest.raises(ValueError, match="no negative families"):
        ng.families("fundus-screening")


def test_dead_leaves_have_the_power_spectrum_of_natural_photographs():
    """Occlusion with power-law sizes gives a spectrum near 1/f^2, as natural images have."""
    images = ng.dead_leaves(np.random.default_rng(0), 6, 128).astype(np.float64).mean(-1)
    power = np.mean([np.abs(np.fft.fft2(g - g.mean())) ** 2 for g in images], axis=0)
    fy, fx = np.meshgrid(np.fft.fftfreq(128), np.fft.fftfreq(128), indexing="ij")
    radius = np.hypot(fy, fx)
    band = (radius > 0.02) & (radius < 0.25)
    slope = np.polyfit(np.log(radius[band]), np.log(power[band]), 1)[0]
    assert -3.0 < slope < -1.5


def test_tiny_crops_enlarge_a_fifth_to_a_third_of_the_side():
    ramp = np.tile(np.arange(200, dtype=np.float64)[None, :] * 255 / 199, (200, 1)).astype(np.uint8)
    crops = ng.tiny_crops(np.random.default_rng(0), [ramp] * 20, 64)
    spans = crops[..., 0].max(axis=(1, 2)).astype(int) - crops[..., 0].min(axis=(1, 2)).astype(int)
    assert np.all(spans > 0.15 * 255) and np.all(spans < 0.33 * 255)


def test_inverted_and_rotated_keep_the_picture():
    image = np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    assert np.array_equal(ng.inverted([image])[0], 255 - image)
    turns = []
    for turned in ng.rotated(np.random.default_rng(0), [image] * 12):
        turns += [k for k in (1, 2, 3) if turned.shape == np.rot90(image, k).shape
                  and np.array_equal(turned, np.rot90(image, k))]
    assert len(turns) == 12 and set(turns) == {1, 2, 3}  # never upright


def test_dicom_family_reads_ct_mr_and_ultrasound_frames(datasets):
    frames = ng._dicom_images(datasets / ng.DICOM_DIR, ng.DICOM_NEGATIVE_CATEGORIES)
    assert len(frames) >= 20  # each distinct picture once, whatever its transfer syntax
    assert all(f.dtype == np.uint8 and f.ndim == 3 and f.shape[2] == 3 for f in frames)
    assert any(f.std(axis=2).mean() > 5 for f in frames)  # the colour ultrasound stays in colour
    assert sum(f.std(axis=2).max() == 0 for f in frames) >= 10  # CT and MR are gray


def test_fundus_photographs_are_upscaled_colour_images(datasets):
    images = ng.fundus(np.random.default_rng(0), 4, 96, root=datasets)
    assert images.shape == (4, 96, 96, 3)
    red, blue = images[..., 0].astype(float).mean(), images[..., 2].astype(float).mean()
    assert red > 2 * blue  # a retina is orange-red


def test_film_photos_tint_the_gray_film(exam_images):
    chest, _ = exam_images
    photos = ng.film_photos(np.random.default_rng(0), chest, 8, 96).astype(float)
    chroma = (photos.max(-1) - photos.min(-1)).mean(axis=(1, 2))
    assert np.median(chroma) > 5  # a colour photograph, which the skin exam's colour gate lets through
