"""The template of every neural patient model: one ``fit``, ``predict_proba``, ``instance_scores``
and state saving; a family supplies only its network, its batch loss and its patient outputs.

``fit`` checks the inputs and parameters, reads each patient's features, splits the patients
into inner-training and validation parts (:func:`~lymphomil.models.training.inner_split`), fits
the family's standardisation on the training part, then — with torch's global generator seeded
(:func:`~lymphomil.models.checks.seeded`) — builds the network and runs
:func:`~lymphomil.models.training.fit_loop`. Each epoch draws its training *units* (patients by
default; cells or fixed-size bags in some families), orders them (shuffled or class-balanced,
:func:`~lymphomil.models.training.epoch_order`), and takes one optimiser step per batch on the
(class-weighted) binary cross-entropy of the family's batch logits. Validation scores each
validation patient alone.

A family implements:

* ``_new_net()`` — its network (``self.n_features_`` is known);
* ``_batch_logits(net, state, units, batch)`` — logits ``(b,)`` of the units at positions
  ``batch`` of this epoch's ``units``;
* ``_patient_output(net, inputs, i)`` — patient ``i`` alone, eval mode: (P(malignant) before any
  calibration — what early stopping monitors —, one score per cell);

and, where it differs from the default, ``_check_params`` (its own hyper-parameters),
``_fit_inputs`` / ``_inputs`` (standardisation; default: pooled features standardised per
dimension with the training patients' statistics), ``_epoch_units`` (default: the training
patients), ``_init_net``, ``_optimizer``, ``_after_fit``, ``_calibrated`` and the extra state it
saves (``_state`` / ``_load_state``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from lymphomil.models.base import PatientModel
from lymphomil.models.checks import (
    BALANCE,
    check_choice,
    check_float,
    check_int,
    check_patients,
    check_patients_y,
    make_generator,
    parse_spec,
    resolve_seed,
    seeded,
)
from lymphomil.models.inputs import fit_standardizer, read_bags
from lymphomil.models.training import (
    chunks,
    class_weights,
    epoch_order,
    fit_loop,
    inner_split,
    load_module_arrays,
    module_arrays,
    optimise_step,
    score_validation,
)


@dataclass
class FitState:
    """What one ``fit`` call trains on: every patient's input, the labels and the split."""

    patients: np.ndarray
    inputs: Any  # indexable by patient position: the family's network input for that patient
    y: np.ndarray
    train_idx: np.ndarray
    val_idx: np.ndarray
    seed: int
    generator: torch.Generator  # the order of the units in each epoch
    extra: dict = field(default_factory=dict)  # what a family keeps for its epochs


class NeuralPatientModel(PatientModel):
    """Base of the neural families (instance, bag, mil, abmil, mil-e2e); see the module doc.

    Subclasses define ``lr``, ``weight_decay``, ``batch_size``, ``max_epochs``, ``patience``,
    ``validation_fraction``, ``balance`` and ``random_state`` (and ``features`` when they read
    cached features) as constructor arguments.
    """

    #: the feature kind read from the store ("pooled" or "map")
    feature_kind: ClassVar[str] = "pooled"

    # -- what a family supplies ------------------------------------------------------------
    def _new_net(self) -> nn.Module:  # pragma: no cover
        raise NotImplementedError

    def _batch_logits(self, net: nn.Module, state: FitState, units: Any,
                      batch: np.ndarray) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _patient_output(self, net: nn.Module, inputs: Any, i: int
                        ) -> tuple[float, np.ndarray]:  # pragma: no cover
        raise NotImplementedError

    def _check_params(self) -> None:
        """The family's own hyper-parameters (the training ones are checked already)."""

    # -- defaults a family may override ------------------------------------------------------
    def _spec(self):
        return parse_spec(self.features)

    def required_features(self) -> list:
        return [(self._spec(), self.feature_kind)]

    @property
    def _description(self) -> str:
        return self.family

    def _fit_inputs(self, patients: np.ndarray, train_idx: np.ndarray) -> Any:
        """Read the features, fit the standardisation on ``train_idx``; every patient's input."""
        bags = read_bags(patients, self._spec(), self.feature_kind)
        self.n_features_ = int(bags[0].shape[1])
        self.feature_mean_, self.feature_scale_ = fit_standardizer(
            np.concatenate([bags[i] for i in train_idx]))
        return self._standardise(patients, bags)

    def _inputs(self, patients: np.ndarray) -> Any:
        """The fitted model's inputs for ``patients`` (features checked against training)."""
        return self._standardise(
            patients, read_bags(patients, self._spec(), self.feature_kind, self.n_features_))

    def _standardise(self, patients: np.ndarray, bags: list[np.ndarray]) -> Any:
        return [torch.from_numpy((b - self.feature_mean_) / self.feature_scale_) for b in bags]

    def _epoch_units(self, net: nn.Module, state: FitState, epoch: int
                     ) -> tuple[Any, np.ndarray, torch.Tensor]:
        """(units, their labels, class weights) of one epoch: the training patients."""
        y_train = state.y[state.train_idx]
        return state.train_idx, y_train, torch.from_numpy(class_weights(y_train, self.balance))

    def _init_net(self, net: nn.Module, state: FitState) -> None:
        """Set a starting point for the network (inside the seeded block)."""

    def _optimizer(self, net: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    def _after_fit(self, state: FitState) -> None:
        """Fit what follows the network (a calibration map) once ``self.net_`` is trained."""

    def _calibrated(self, p: np.ndarray) -> np.ndarray:
        return p

    def _state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """The fitted state beside the network: (JSON metadata, named arrays)."""
        return ({"n_features": self.n_features_},
                {"feature_mean": self.feature_mean_, "feature_scale": self.feature_scale_})

    def _load_state(self, meta: dict, arrays: dict[str, np.ndarray]) -> None:
        self.n_features_ = int(meta["n_features"])
        self.feature_mean_ = np.asarray(arrays["feature_mean"], dtype=np.float32)
        self.feature_scale_ = np.asarray(arrays["feature_scale"], dtype=np.float32)

    # -- the template --------------------------------------------------------------------------
    def _check_training_params(self) -> None:
        check_float("lr", self.lr, 0.0, low_open=True)
        check_float("weight_decay", self.weight_decay, 0.0)
        check_int("batch_size", self.batch_size)
        check_int("max_epochs", self.max_epochs)
        check_int("patience", self.patience)
        check_float("validation_fraction", self.validation_fraction, 0.0, 0.5)
        check_choice("balance", self.balance, BALANCE)

    def fit(self, patients, y):
        patients, y = check_patients_y(patients, y)
        self._check_training_params()
        self._check_params()
        seed = resolve_seed(self.random_state)
        train_idx, val_idx = inner_split(y, self.validation_fraction, seed)
        inputs = self._fit_inputs(patients, train_idx)
        state = FitState(patients, inputs, y, train_idx, val_idx, seed, make_generator(seed, 1))
        with seeded(seed):
            net = self._new_net()
            self._init_net(net, state)
            optimizer = self._optimizer(net)
            history, best = fit_loop(
                net, train_epoch=lambda epoch: self._train_epoch(net, optimizer, state, epoch),
                validate=(lambda: self._validate(net, state)) if len(val_idx) else None,
                max_epochs=self.max_epochs, patience=self.patience,
                description=self._description)
        self.net_, self.history_, self.best_epoch_, self.seed_ = net, history, best, seed
        self._after_fit(state)
        return self._mark_fitted()

    def _train_epoch(self, net: nn.Module, optimizer: torch.optim.Optimizer, state: FitState,
                     epoch: int) -> float:
        """One epoch; the mean loss per unit."""
        units, unit_y, weights = self._epoch_units(net, state, epoch)
        total, seen = 0.0, 0
        for batch in chunks(epoch_order(unit_y, self.balance, state.generator), self.batch_size):
            logits = self._batch_logits(net, state, units, batch)  # (b,)
            targets = torch.from_numpy(unit_y[batch]).float()  # (b,)
            total += optimise_step(optimizer, logits, targets,
                                   weights if self.balance == "weighted" else None)
            seen += len(batch)
        return total / max(seen, 1)

    def _validate(self, net: nn.Module, state: FitState) -> tuple[float, float]:
        p = [self._patient_output(net, state.inputs, i)[0] for i in state.val_idx]
        return score_validation(state.y[state.val_idx], np.array(p))

    def _outputs(self, patients) -> list[tuple[float, np.ndarray]]:
        self._check_fitted()
        inputs = self._inputs(check_patients(patients))
        self.net_.eval()
        return [self._patient_output(self.net_, inputs, i) for i in range(len(inputs))]

    def predict_proba(self, patients):
        p1 = self._calibrated(np.array([p for p, _ in self._outputs(patients)]))
        return np.column_stack([1 - p1, p1])

    def instance_scores(self, patients):
        return [scores for _, scores in self._outputs(patients)]

    # -- state ---------------------------------------------------------------------------------
    def _get_state(self):
        meta, arrays = self._state()
        meta.update(history=self.history_, best_epoch=int(self.best_epoch_), seed=int(self.seed_))
        return meta, {**arrays, **module_arrays(self.net_)}

    def _set_state(self, meta, arrays):
        self.history_ = list(meta.get("history", []))
        self.best_epoch_ = int(meta.get("best_epoch", 0))
        self.seed_ = int(meta.get("seed", 0))
        self._load_state(meta, arrays)
        self.net_ = self._restored_net()
        load_module_arrays(self.net_, arrays)
        self.net_.eval()

    def _restored_net(self) -> nn.Module:
        """The network's architecture for loading saved weights into."""
        return self._new_net()
