"""The per-patient OOD checks (lymphomil.ood) on the synthetic cohort: a shifted patient is
flagged with the right reason, clean ones mostly not, the state survives JSON, and the fit reads
the training patients only."""

from __future__ import annotations

import json
import sys
from dataclasses import replace

import numpy as np
import pytest

import lymphomil
from lymphomil.features.in_memory import InMemoryStore
from lymphomil.ood import (
    DEFAULT_FEATURES,
    IMAGE_STATS,
    OODCheck,
    conformal_threshold,
    image_stats,
    patient_image_stats,
)
from lymphomil.runtime.errors import LymphomilError

N_TRAIN = 18


@pytest.fixture(scope="module")
def patients(synthetic_root, synthetic_features):
    cohort = lymphomil.load_cohort(synthetic_root)
    return lymphomil.with_features(cohort.patients, "fusion-mean", cache_dir=synthetic_features)


@pytest.fixture(scope="module")
def fitted(patients):
    return OODCheck().fit(patients[:N_TRAIN])


def _decoded(patient, at_most=32):
    from lymphomil.features.preprocess import decode_image
    from lymphomil.ood import spread_indices

    return [decode_image(patient.image_paths[i]).numpy()
            for i in spread_indices(patient.n_images, at_most)]


def _with_bag(patient, bag):
    store = InMemoryStore({(patient.id, DEFAULT_FEATURES, "pooled"): bag})
    return patient.with_features(store)


def test_image_stats_names_and_nucleus():
    image = np.full((3, 224, 224), 220, dtype=np.uint8)
    image[:, 92:132, 92:132] = np.array([60, 25, 120], dtype=np.uint8)[:, None, None]
    stats = image_stats(image)
    assert stats.shape == (len(IMAGE_STATS),)
    assert stats[IMAGE_STATS.index("nucleus_size")] == pytest.approx(40, abs=2)
    assert stats[IMAGE_STATS.index("nucleus_g")] == pytest.approx(25)
    blank = image_stats(np.full((3, 224, 224), 200, dtype=np.uint8))
    assert blank[IMAGE_STATS.index("nucleus_size")] == 0
    assert np.isnan(blank[IMAGE_STATS.index("nucleus_r")])


def test_conformal_threshold_is_the_rank_or_the_largest():
    scores = np.arange(1, 201, dtype=float)  # n = 200: ceil(201 * 0.99) = 199
    assert conformal_threshold(scores, 0.99) == 199
    assert conformal_threshold(scores[:20], 0.99) == 20  # rank beyond n: the largest


def test_clean_patients_mostly_not_flagged(fitted, patients):
    results = fitted.check(patients[N_TRAIN:])
    assert [r.patient_id for r in results] == [p.id for p in patients[N_TRAIN:]]
    assert sum(r.flagged for r in results) <= 1
    for r in results:
        assert r.flagged == bool(r.reasons) == (r.score > 1)
        assert set(r.checks) == {"cells", "colour", "blur", "compression", "size",
                                 "attributes", "images"}


def test_held_out_flags_estimate_the_clean_referral_rate(fitted, patients):
    # the thresholds of all training scores flag none of them (the largest); held out, each
    # fold against the others' thresholds, the checks flag a few: what new patients meet
    flags = fitted.held_out_flagged_
    assert flags.shape == (N_TRAIN,) and flags.dtype == bool
    # about (checks)/(fold size + 1) each: 5/15 on 18 patients, 5/105 on the 130 of the cohort
    assert flags.mean() <= 0.5
    assert not any(r.flagged for r in fitted.check(patients[:N_TRAIN]))
    # a training patient whose cells are nothing like the others' is flagged held out
    bag = patients[0].bag(fitted.required_features()[0][0])
    odd = np.abs(np.random.default_rng(0).normal(3.0, 2.0, bag.shape)).astype(np.float32)
    training = [_with_bag(patients[0], odd), *patients[1:N_TRAIN]]
    again = OODCheck().fit(training).held_out_flagged_
    assert again[0] and (again[1:] == flags[1:]).mean() >= 0.8


def test_inverted_colours_are_flagged_for_stain(fitted, patients):
    patient = patients[N_TRAIN]
    inverted = np.stack([image_stats(255 - image) for image in _decoded(patient)])
    [result] = fitted.check([patient], image_stats={patient.id: inverted})
    assert result.flagged
    assert any(reason.startswith("stain colour unlike the training cohort")
               for reason in result.reasons), result.reasons


def test_rescaled_images_are_flagged_for_size(fitted, patients):
    from scipy import ndimage

    patient = patients[N_TRAIN]
    stats = []
    for image in _decoded(patient):
        zoomed = ndimage.zoom(image, (1, 1.8, 1.8), order=1)  # (3, 403, 403)
        start = (zoomed.shape[-1] - 224) // 2
        stats.append(image_stats(zoomed[:, start:start + 224, start:start + 224]))
    [result] = fitted.check([patient], image_stats={patient.id: np.stack(stats)})
    assert any("× larger than in training (magnification?)" in r for r in result.reasons), \
        result.reasons


def test_foreign_cells_are_flagged(fitted, patients):
    patient = patients[N_TRAIN]
    bag = patient.bag(fitted.required_features()[0][0])
    rng = np.random.default_rng(0)
    odd = np.abs(rng.normal(3.0, 2.0, bag.shape)).astype(np.float32)  # nothing like a cell
    [result] = fitted.check([_with_bag(patient, odd)])
    assert result.checks["cells"] > 1
    assert any(r.startswith("100 % of the cells are unlike the training cells")
               for r in result.reasons), result.reasons


def test_out_of_range_age_and_too_few_images(fitted, patients):
    patient = patients[N_TRAIN]
    old = replace(patient, age=130.0)
    [result] = fitted.check([old])
    assert result.flagged and result.checks["attributes"] > 1
    low, high = fitted.state_.age_range
    assert f"age 130 outside the training range {low:.0f}–{high:.0f}" in result.reasons

    bag = patient.bag(fitted.required_features()[0][0])
    few = _with_bag(replace(patient, image_paths=tuple(patient.image_paths[:2])), bag[:2])
    [result] = fitted.check([few])
    assert any(r.startswith("only 2 usable images") for r in result.reasons), result.reasons


def test_state_round_trips_through_json(fitted, patients, tmp_path):
    path = tmp_path / "ood.json"
    fitted.save(path)
    assert path.stat().st_size < 400_000
    loaded = OODCheck.load(path)
    assert json.loads(path.read_text()) == json.loads(json.dumps(loaded.to_dict()))
    before = fitted.check(patients[N_TRAIN:])
    after = loaded.check(patients[N_TRAIN:])
    assert [(r.score, r.flagged, r.reasons) for r in before] == \
        [(r.score, r.flagged, r.reasons) for r in after]


def test_invalid_state_is_a_clear_error(fitted):
    data = fitted.to_dict()
    data["cells"]["components"] = data["cells"]["components"][:-1]
    with pytest.raises(LymphomilError, match="invalid at cells"):
        OODCheck.from_dict(data)
    with pytest.raises(LymphomilError, match="invalid"):
        OODCheck.from_dict({**fitted.to_dict(), "format": "pickle"})
    with pytest.raises(LymphomilError, match="not fitted"):
        OODCheck().check([])


def test_fit_reads_only_the_training_patients(patients, monkeypatch):
    from lymphomil import ood

    read: set[str] = set()

    class SpyStore:
        def __init__(self, inner):
            self.inner = inner

        def load(self, patient, spec, kind="pooled"):
            read.add(patient.id)
            return self.inner.load(patient, spec, kind)

    real_stats = ood.patient_image_stats

    def spy_stats(patient, *args, **kwargs):
        read.add(patient.id)
        return real_stats(patient, *args, **kwargs)

    monkeypatch.setattr("lymphomil.ood.check.patient_image_stats", spy_stats)
    spied = [p.with_features(SpyStore(p.features)) for p in patients]
    train = spied[:N_TRAIN]
    OODCheck().fit(train)
    assert read == {p.id for p in train}


def test_a_patient_without_features_is_a_clear_error(fitted, patients):
    bare = patients[N_TRAIN].with_features(None)
    with pytest.raises(LymphomilError, match="no feature store attached"):
        fitted.check([bare])


def test_patient_image_stats_bounded(patients):
    stats = patient_image_stats(patients[0], max_images=5)
    assert stats.shape == (5, len(IMAGE_STATS))


def test_image_stats_are_memoised_by_content(patients, monkeypatch, tmp_path):
    from lymphomil import ood

    first = patient_image_stats(patients[0], max_images=4, cache_dir=tmp_path)
    ood.save_stats_memo(tmp_path)
    assert (tmp_path / "ood" / f"image-stats-v{ood.STATS_VERSION}.json").is_file()
    monkeypatch.setattr("lymphomil.ood.stats._MEMO", {})  # a fresh process: only the file is left

    def no_decoding(path):
        raise AssertionError(f"decoded {path} again")

    monkeypatch.setattr("lymphomil.features.preprocess.decode_image", no_decoding)
    # nor is the decoder (torch) imported: a warm run's checks never load torch
    monkeypatch.setitem(sys.modules, "lymphomil.features.preprocess", None)
    again = patient_image_stats(patients[0], max_images=4, cache_dir=tmp_path)
    np.testing.assert_array_equal(np.isnan(first), np.isnan(again))
    np.testing.assert_allclose(np.nan_to_num(first), np.nan_to_num(again))
