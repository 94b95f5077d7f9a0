"""Partial fine-tuning on a cached frozen trunk (issue 18): the ``trunk`` feature kind and the
``mil-trunk`` / ``topk-trunk`` heads.

The model tests read a toy *trunk* cohort (random activations shaped like small-cnn's front at
32 px, 128×4×4, held in an InMemoryStore); the cache tests extract real trunks from a tiny
synthetic image cohort.
"""

from __future__ import annotations

import textwrap
from datetime import date
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.base import clone

from lymphomil.data.cohort import Patient, as_patient_array, load_cohort
from lymphomil.data.synth import write_synthetic_cohort
from lymphomil.features import FeatureCache, FeatureSpec
from lymphomil.features.cache import SUFFIX
from lymphomil.features.in_memory import InMemoryStore
from lymphomil.models.base import create_model, load_model
from lymphomil.models.mil_trunk import MILTrunkModel
from lymphomil.models.topk_trunk import TopKTrunkModel
from lymphomil.models.training import module_arrays
from tests.killing import kill_extraction_midway
from tests.models.conftest import check_contract, make_natural_log_folder

TOY = "small-cnn:none@32"
T_DIM, T_HW = 128, 4


def _trunk_patients(n: int, seed: int, store: InMemoryStore, prefix: str,
                    n_range=(4, 10)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    direction = np.random.default_rng(54321).normal(size=T_DIM).astype(np.float32)
    y = np.array([0, 1] * (n // 2) + [1] * (n % 2))
    rng.shuffle(y)
    patients = []
    for i, label in enumerate(y):
        n_cells = int(rng.integers(n_range[0], n_range[1] + 1))
        share = rng.uniform(0.3, 0.6) if label == 1 else 0.0
        trunk = np.abs(rng.normal(size=(n_cells, T_DIM, T_HW, T_HW))).astype(np.float32)
        positive = rng.uniform(size=n_cells) < share
        trunk[positive] += np.abs(direction)[None, :, None, None]
        pid = f"{prefix}{i:03d}"
        store.put(pid, TOY, "trunk", trunk)
        age, count = float(rng.normal(70, 10)), float(rng.lognormal(np.log(8.0), 0.5))
        patients.append(Patient(pid, int(label), "MF"[i % 2], date(1950, 1, 1), age, count,
                                "train", (), features=store))
    return as_patient_array(patients), y


@pytest.fixture(scope="module")
def toy():
    store = InMemoryStore()
    train, y = _trunk_patients(12, 3, store, "F")
    test, _ = _trunk_patients(4, 4, store, "G")
    return train, y, test, store


def _models():
    from lymphomil.models.attributes import AttributeModel
    from lymphomil.models.fusion import FusionModel

    mil = MILTrunkModel(features=TOY, max_epochs=2, grad_images=8, random_state=5)
    topk = TopKTrunkModel(features=TOY, max_epochs=2, k=3, random_state=5)
    return {"mil-trunk": mil, "topk-trunk": topk,
            "topk-trunk-image": TopKTrunkModel(features=TOY, max_epochs=2, k=3,
                                               use_attributes=False, random_state=5),
            "fused-mil": FusionModel(AttributeModel(param_grid="compact"), clone(mil),
                                     rule="mean", inner_folds=2),
            "fused-topk": FusionModel(AttributeModel(param_grid="compact"), clone(topk),
                                      rule="mean", inner_folds=2)}


# --------------------------------------------------------------------------- the trunk cache


def _images(patient, crop: int, mean, std) -> torch.Tensor:
    from lymphomil.features.preprocess import centre_crop, decode_image, make_preprocess

    raw = torch.stack([centre_crop(decode_image(p), crop) for p in patient.image_paths])
    return make_preprocess(crop, mean, std)(raw)  # (n, 3, c, c)


@pytest.mark.parametrize("spec", ["small-cnn:none@32", "efficientnet-lite0@64"])
def test_cached_trunk_equals_a_live_forward_of_the_frozen_layers(spec, tmp_path: Path) -> None:
    from lymphomil.features.backbones import create_backbone
    from lymphomil.features.trunk import split_trunk

    spec = FeatureSpec.parse(spec)
    root = write_synthetic_cohort(tmp_path / "cohort", n_patients=3, seed=1,
                                  images_per_patient=(3, 5))
    patients = load_cohort(root).patients
    cache = FeatureCache(tmp_path / "cache", batch_size=4)
    cache.ensure(patients, spec, kinds=("trunk",))
    bb = create_backbone(spec.backbone, spec.weights)
    front, tail = split_trunk(spec.backbone, bb.model)
    for patient in patients:
        cached = cache.load(patient, spec, "trunk")
        with torch.no_grad():
            x = _images(patient, spec.crop, bb.mean, bb.std)
            live = front(x)  # (n, d_t, h, w), the unfolded network
            whole = bb.model(x)
        assert cached.shape == tuple(live.shape)
        # float16 on disk: equal to the live activations within float16 rounding
        np.testing.assert_allclose(cached, live.numpy(), rtol=2 ** -10, atol=2e-3)
        # and the tail on the live trunk is exactly the backbone's map
        torch.testing.assert_close(tail(live), whole, rtol=0, atol=0)
    stored = next(cache.root.rglob(f"*.trunk{SUFFIX}")).read_bytes()
    assert b'"F16"' in stored[:4096]  # float16 on disk


_KILLABLE = textwrap.dedent("""
    import sys, time
    from lymphomil.data.cohort import load_cohort
    from lymphomil.features import FeatureCache, FeatureSpec
    patients = load_cohort(sys.argv[1]).patients
    cache = FeatureCache(sys.argv[2], workers=1, batch_size=2,
                         on_progress=lambda done, total, rate: time.sleep(0.15))
    cache.ensure(patients, FeatureSpec("small-cnn", "none", 32, False, "fp32"), kinds=("trunk",))
""")


def test_an_interrupted_trunk_extraction_resumes(tmp_path: Path) -> None:
    spec = FeatureSpec("small-cnn", "none", 32, False, "fp32")
    root = write_synthetic_cohort(tmp_path / "cohort", n_patients=10, seed=2,
                                  images_per_patient=(4, 6))
    patients = load_cohort(root).patients
    cache_dir = tmp_path / "cache"
    finished = kill_extraction_midway(_KILLABLE, [str(root), str(cache_dir)], cache_dir,
                                      f"*.trunk{SUFFIX}")
    assert 2 <= finished < len(patients)

    cache = FeatureCache(cache_dir, batch_size=2)  # the killed run's (part of the key)
    cache.ensure(patients, spec, kinds=("trunk",))
    assert cache.last_run["cached_patients"] == finished
    assert cache.last_run["computed_patients"] == len(patients) - finished
    reference = FeatureCache(tmp_path / "reference")
    for p in patients:
        np.testing.assert_array_equal(cache.load(p, spec, "trunk"),
                                      reference.load(p, spec, "trunk"))


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("name", ["mil-trunk", "topk-trunk"])
def test_only_the_tail_and_head_are_trained(name, toy) -> None:
    """The frozen front is not in the network (its output is the cached, gradient-free input);
    every parameter of the tail and the head gets a gradient."""
    from lymphomil.features.backbones import create_backbone
    from lymphomil.features.trunk import split_trunk
    from lymphomil.models.checks import make_generator
    from lymphomil.models.neural import FitState

    train, y, _, _ = toy
    model = _models()[name]
    model.fit(train, y)
    net = model._new_net()
    front, tail = split_trunk("small-cnn", create_backbone("small-cnn", "none").model)
    # the tail starts from the backbone's own weights
    for a, b in zip(net.tail.state_dict().values(), tail.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    front_ids = {id(p) for p in front.parameters()}
    assert not front_ids & {id(p) for p in net.parameters()}
    inputs = model._fit_inputs(train, np.arange(len(train)))
    state = FitState(train, inputs, y, np.arange(len(train)), np.arange(0), 0,
                     make_generator(0, 1), {"subset": make_generator(0, 3)})
    net.train()
    logits = model._batch_logits(net, state, np.arange(len(train)), np.arange(4))  # (4,)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, torch.from_numpy(y[:4]).float())
    loss.backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname
    cached = [inp[0] if isinstance(inp, tuple) else inp for inp in inputs]
    assert all(not t.requires_grad and t.grad is None for t in cached)
    # training moved the tail away from its start
    fitted = model.net_.tail.state_dict()
    assert any(not torch.equal(fitted[k], v) for k, v in tail.state_dict().items()
               if v.is_floating_point())


@pytest.mark.parametrize("name", ["mil-trunk", "topk-trunk"])
def test_same_seed_gives_bit_identical_weights(name, toy) -> None:
    train, y, _, _ = toy
    model = _models()[name]
    a = clone(model).fit(train, y)
    torch.manual_seed(123)
    b = clone(model).fit(train, y)
    wa, wb = module_arrays(a.net_), module_arrays(b.net_)
    assert wa.keys() == wb.keys()
    for key in wa:
        np.testing.assert_array_equal(wa[key], wb[key])
    c = clone(model).set_params(random_state=6).fit(train, y)
    assert any(not np.array_equal(wa[k], v) for k, v in module_arrays(c.net_).items())


# --------------------------------------------------------------------------- the contract


@pytest.mark.parametrize("name", ["mil-trunk", "topk-trunk", "topk-trunk-image", "fused-mil",
                                  "fused-topk"])
def test_contract_on_the_trunk_cohort(name, toy, tmp_path: Path) -> None:
    """The contract every registered model keeps (tests/models/conftest.py::check_contract), on
    trunk features."""
    train, y, test, store = toy

    def changed(patient):  # other activations, 13 more cells
        rng = np.random.default_rng(7)
        n = patient.bag(TOY, "trunk").shape[0] + 13
        trunk = np.abs(rng.normal(size=(n, T_DIM, T_HW, T_HW))).astype(np.float32) * 5
        return patient.with_features(
            InMemoryStore({(patient.id, FeatureSpec.parse(TOY).label(), "trunk"): trunk}))

    name_or_none = name if name in ("mil-trunk", "topk-trunk", "topk-trunk-image") else None
    check_contract(_models()[name], train, y, test, tmp_path / "model", name=name_or_none,
                   bag=lambda p: p.bag(TOY, "trunk").shape[0], changed=changed)


def test_registered_names_and_bad_options(toy) -> None:
    from lymphomil.runtime.errors import LymphomilError

    for name in ("mil-trunk", "topk-trunk", "topk-trunk-image", "fusion-mean-miltrunk",
                 "fusion-mean-topktrunk"):
        assert create_model(name) is not None
    assert create_model("topk-trunk-image").get_params()["use_attributes"] is False
    assert create_model("mil-trunk").required_features()[0][1] == "trunk"
    train, y, _, _ = toy
    with pytest.raises(LymphomilError, match="no trunk cut"):
        MILTrunkModel(features="dinov2-s@112").fit(train, y)
    with pytest.raises(LymphomilError, match="k"):
        TopKTrunkModel(features=TOY, k=0).fit(train, y)


def test_topk_cell_classifier_starts_as_the_attribute_logistic_regression(toy) -> None:
    from lymphomil.models.checks import make_generator
    from lymphomil.models.neural import FitState

    train, y, _, _ = toy
    model = TopKTrunkModel(features=TOY, max_epochs=1)
    idx = np.arange(len(train))
    inputs = model._fit_inputs(train, idx)
    model._check_params()
    net = model._new_net()
    model._init_net(net, FitState(train, inputs, y, idx, idx[:0], 0, make_generator(0, 1)))
    weight = net.classifier.weight[0].detach()
    d = net.classifier.in_features - 2
    assert torch.all(weight[:d] == 0) and torch.all(weight[d:] != 0)
    # at the start every cell of a patient has the attribute model's logit
    x, extra = inputs[0]
    with torch.no_grad():
        cells = net.cell_logits(x, extra, 64)
    assert torch.allclose(cells, cells[0].expand_as(cells))


def test_a_topk_folder_saved_with_the_natural_log_count_predicts_the_same(toy, tmp_path) -> None:
    """Before the one log base (issue 23) the folder held natural-log statistics and no names."""
    train, y, test, _ = toy
    fitted = TopKTrunkModel(features=TOY, max_epochs=1, k=3, random_state=5).fit(train, y)
    fitted.save(tmp_path / "m")
    assert load_model(tmp_path / "m").attribute_mean_[1] == fitted.attribute_mean_[1]
    make_natural_log_folder(tmp_path / "m", names=None)
    old = load_model(tmp_path / "m")
    np.testing.assert_allclose(old.attribute_mean_, fitted.attribute_mean_, rtol=1e-6)
    np.testing.assert_allclose(old.predict_proba(test), fitted.predict_proba(test), atol=1e-6)


def test_topk_score_k_is_chosen_on_the_inner_validation_patients(toy, tmp_path: Path) -> None:
    from lymphomil.evaluation.metrics import balanced_log_loss
    from lymphomil.models.checks import resolve_seed
    from lymphomil.models.training import inner_split

    train, y, test, _ = toy
    ks = (1, 3, 6)
    fitted = TopKTrunkModel(features=TOY, max_epochs=2, k=3, ks=ks, validation_fraction=0.34,
                            random_state=5).fit(train, y)
    _, val_idx = inner_split(y, 0.34, resolve_seed(5))
    cells = fitted.instance_scores(train[val_idx])  # every cell's logit, after the fit

    def sigmoid(z: float) -> float:
        return 1.0 / (1.0 + np.exp(-z))

    losses = [balanced_log_loss(y[val_idx], np.array(
        [sigmoid(np.sort(c)[::-1][:min(k, len(c))].mean()) for c in cells])) for k in ks]
    np.testing.assert_allclose(fitted.k_losses_, losses, rtol=1e-5)
    assert fitted.k_ == ks[int(np.argmin(losses))]
    # the patient score is the mean of the chosen k highest cell logits
    p = fitted.predict_proba(test)[:, 1]
    expected = [sigmoid(np.sort(c)[::-1][:min(fitted.k_, len(c))].mean())
                for c in fitted.instance_scores(test)]
    np.testing.assert_allclose(p, expected, rtol=1e-5)
    fitted.save(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.k_ == fitted.k_
    np.testing.assert_array_equal(loaded.predict_proba(test), fitted.predict_proba(test))
    # one candidate: the training k is kept
    single = TopKTrunkModel(features=TOY, max_epochs=1, k=3, ks=(3,)).fit(train, y)
    assert single.k_ == 3
    # a refit does not train with the k chosen by an earlier fit
    refit = clone(fitted)
    refit.k_ = 6 if fitted.k_ != 6 else 1
    refit.fit(train, y)
    def losses(model):
        return [(r["train_loss"], r["val_loss"]) for r in model.history_]

    assert losses(refit) == losses(fitted) and refit.k_ == fitted.k_
    np.testing.assert_array_equal(refit.predict_proba(test), fitted.predict_proba(test))


@pytest.mark.parametrize("ks", [(), (0, 4), (2.5,), (True,), "8"])
def test_topk_bad_ks_are_refused(toy, ks) -> None:
    from lymphomil.runtime.errors import LymphomilError

    train, y, _, _ = toy
    with pytest.raises(LymphomilError, match="ks="):
        TopKTrunkModel(features=TOY, max_epochs=1, ks=ks).fit(train, y)
