"""The streaming extractor: what it feeds the network, and that a batch's layout or neighbours
never change an image's features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lymphomil.data.cohort import load_cohort
from lymphomil.data.folders import path_strings
from lymphomil.data.synth import write_synthetic_cohort
from lymphomil.features import create_backbone
from lymphomil.features.extract import Extractor, Job, model_only_rate
from lymphomil.features.preprocess import centre_crop, decode_image, make_preprocess

CROP = 64


@pytest.fixture(scope="module")
def patients(tmp_path_factory) -> list:
    root = write_synthetic_cohort(tmp_path_factory.mktemp("cohort") / "c", n_patients=4, seed=3,
                                  images_per_patient=(5, 9))
    return load_cohort(root).patients


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return create_backbone("small-cnn", "none")


def _extract(extractor: Extractor, jobs: list[Job]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    extractor.run(jobs, lambda job, arrays, bad: out.__setitem__(job.key, arrays["pooled"]))
    return out


def test_new_batch_is_channels_last_and_holds_the_decoded_pixels(patients, backbone) -> None:
    extractor = Extractor(backbone, CROP, "fp32", batch_size=4, workers=1)
    batch = extractor.new_batch()  # (B, 3, c, c)
    assert batch.shape == (4, 3, CROP, CROP) and batch.dtype == torch.uint8
    assert batch.is_contiguous(memory_format=torch.channels_last)
    assert not batch.any()
    path = patients[0].image_paths[0]
    batch[1].copy_(centre_crop(decode_image(path), CROP))
    assert torch.equal(batch[1], centre_crop(decode_image(path), CROP).contiguous())
    assert not batch[0].any() and not batch[2:].any()


def test_streamed_features_match_the_plain_network(patients, backbone) -> None:
    """Decoding into channels-last batches, padding, BatchNorm folding and two streams give the
    features of the plain network run on each image alone (fp32)."""
    extractor = Extractor(backbone, CROP, "fp32", batch_size=4, workers=2)
    jobs = [Job(str(p.id), path_strings(p.image_paths)) for p in patients]
    got = _extract(extractor, jobs)
    preprocess = make_preprocess(CROP, backbone.mean, backbone.std)
    model = backbone.model.eval()
    with torch.inference_mode():
        for patient in patients:
            images = torch.stack([decode_image(p) for p in patient.image_paths])  # (n, 3, H, W)
            expected = model(preprocess(images)).mean(dim=(2, 3)).numpy()  # (n, d)
            np.testing.assert_allclose(got[str(patient.id)], expected, rtol=1e-4, atol=1e-5)


def test_features_do_not_depend_on_batch_neighbours_or_order(patients, backbone) -> None:
    extractor = Extractor(backbone, CROP, "fp32", batch_size=4, workers=2)
    jobs = [Job(str(p.id), path_strings(p.image_paths)) for p in patients]
    forward = _extract(extractor, jobs)
    backward = _extract(extractor, jobs[::-1])  # every image lands beside other images
    alone = _extract(extractor, jobs[1:2])  # one patient, its last batch padded
    for key, array in forward.items():
        assert np.array_equal(array, backward[key])
    assert np.array_equal(alone[jobs[1].key], forward[jobs[1].key])


def test_paths_may_be_strings_or_paths(patients, backbone) -> None:
    extractor = Extractor(backbone, CROP, "fp32", batch_size=4, workers=1)
    patient = patients[2]
    as_strings = _extract(extractor, [Job("a", path_strings(patient.image_paths))])["a"]
    as_paths = _extract(extractor, [Job("a", [Path(p) for p in patient.image_paths])])["a"]
    assert np.array_equal(as_strings, as_paths)


def test_model_only_rate_runs_the_same_batches(patients, backbone) -> None:
    extractor = Extractor(backbone, CROP, "fp32", batch_size=4, workers=2)
    images = torch.stack([decode_image(p) for p in patients[0].image_paths])  # (n, 3, H, W)
    shapes = []
    forward = extractor.forward

    def counted(x: torch.Tensor):
        shapes.append(tuple(x.shape))
        return forward(x)

    extractor.forward = counted
    rate = model_only_rate(extractor, images, repeats=2)
    n_batches = -(-len(images) // 4)
    # one warm-up batch, then every padded batch of the extraction once per repeat
    assert shapes == [(4, 3, CROP, CROP)] * (1 + 2 * n_batches)
    assert np.isfinite(rate) and rate > 0
