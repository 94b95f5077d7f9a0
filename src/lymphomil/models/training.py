"""Training hygiene shared by every neural patient model (issue 4, point 6).

* **Seeds.** Everything random comes from the model's ``random_state``: explicit
  :class:`torch.Generator` objects for shuffling/sampling, and :func:`seeded` around a whole fit
  (``torch.random.fork_rng`` + ``manual_seed``) for what torch draws from its global generator
  (weight initialisation, dropout). The global state is restored afterwards, so results are the
  same in any call order and a fit never disturbs its caller's random numbers.
* **Early stopping** on an inner validation split carved, stratified and *by patient*, from the
  patients passed to ``fit`` (:func:`inner_split`) — never from anything else. The monitored
  quantity is the class-balanced patient log-loss; the best epoch's weights are restored.
* **Class imbalance**: ``balance`` is ``"none"``, ``"weighted"`` (per-unit loss weights
  ``n / (2 n_class)``) or ``"sampler"`` (each epoch draws its units with replacement, classes
  equally likely).
* **Bookkeeping**: one record per epoch (``epoch, train_loss, val_loss, val_bal_acc, seconds,
  cpu_seconds``) kept in the model's ``history_`` and logged (``logging``, DEBUG per epoch, INFO
  summary); a rich progress bar when stderr is a terminal.
* **Collate**: :func:`pad_bags` pads a list of per-patient bags and returns the mask — cells of
  two patients are never mixed in one row.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from lymphomil.errors import LymphomilError

if TYPE_CHECKING:  # pragma: no cover
    from lymphomil.features.spec import FeatureSpec

logger = logging.getLogger("lymphomil.models")

BALANCE = ("none", "weighted", "sampler")


# --------------------------------------------------------------------------- validation of inputs


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise LymphomilError(f"{name}={value!r} is not one of {', '.join(map(repr, choices))}",
                             fix=f"set {name} to one of the listed values")


def check_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise LymphomilError(f"{name}={value!r} must be an integer >= {minimum}",
                             fix=f"set {name} to an integer >= {minimum}")


def check_float(name: str, value: Any, low: float = 0.0, high: float = math.inf,
                low_open: bool = False, high_open: bool = False) -> None:
    ok = isinstance(value, (int, float, np.floating)) and not isinstance(value, bool) \
        and math.isfinite(float(value))
    if ok:
        v = float(value)
        ok = (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    if not ok:
        lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
        raise LymphomilError(f"{name}={value!r} must be a number in {lo}{low:g}, {high:g}{hi}",
                             fix=f"set {name} to a number in that range")


def check_patients(patients: Any) -> np.ndarray:
    """Patients as a 1-D object array (a list, a tuple or an object array are accepted)."""
    if isinstance(patients, np.ndarray) and patients.dtype == object and patients.ndim == 1:
        out = patients
    else:
        items = list(patients)
        out = np.empty(len(items), dtype=object)
        out[:] = items
    if len(out) == 0:
        raise LymphomilError("no patients given", fix="pass at least one patient")
    return out


def check_patients_y(patients: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``fit``'s inputs: patients as an object array, ``y`` as 0/1 with both classes."""
    patients = check_patients(patients)
    y = np.asarray(y).ravel()
    if len(y) != len(patients):
        raise LymphomilError(f"{len(patients)} patients but {len(y)} labels",
                             fix="give one label per patient")
    if y.dtype.kind not in "biuf" or not np.isin(y, (0, 1)).all():
        raise LymphomilError("labels must be 0 (reactive) or 1 (malignant)",
                             fix="fit on labelled patients only (leave out LABEL -1)")
    y = y.astype(np.int64)
    if len(np.unique(y)) < 2:
        raise LymphomilError("the training patients hold a single class",
                             fix="train on reactive and malignant patients")
    return patients, y


# --------------------------------------------------------------------------- seeds


def resolve_seed(random_state: Any) -> int:
    """An int seed from ``random_state`` (int, ``None`` = fresh entropy, or a numpy generator)."""
    if random_state is None:
        return int(np.random.SeedSequence().generate_state(1)[0] & 0x7FFFFFFF)
    if isinstance(random_state, (int, np.integer)) and not isinstance(random_state, bool):
        if random_state < 0:
            raise LymphomilError(f"random_state={random_state} must be >= 0",
                                 fix="use a non-negative integer seed")
        return int(random_state)
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(0, 2**31 - 1))
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(0, 2**31 - 1))
    raise LymphomilError(f"random_state={random_state!r} is not an integer seed",
                         fix="use an integer seed (or None for a fresh one)")


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with torch's global CPU generator set to ``seed``, restoring it afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def make_generator(seed: int, stream: int = 0) -> torch.Generator:
    """An explicit generator; ``stream`` gives independent streams from one seed."""
    generator = torch.Generator()
    generator.manual_seed(int(np.random.SeedSequence([seed, stream]).generate_state(1)[0]))
    return generator


def numpy_rng(seed: int, stream: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, stream])


# --------------------------------------------------------------------------- splits and balance


def inner_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split of the training *patients* into (train, validation) indices.

    The validation part is empty (no early stopping) when ``fraction`` is 0 or when a class has
    fewer than 2 patients to give (both classes must stay on both sides).
    """
    y = np.asarray(y)
    idx = np.arange(len(y))
    if fraction <= 0:
        return idx, idx[:0]
    rng = numpy_rng(seed, 101)
    train, val = [], []
    for cls in (0, 1):
        members = idx[y == cls]
        n_val = int(round(fraction * len(members)))
        n_val = min(max(n_val, 1), len(members) - 1)
        if len(members) < 2 or n_val < 1:
            logger.warning("too few patients of class %d for an inner validation split; "
                           "training without early stopping", cls)
            return idx, idx[:0]
        members = rng.permutation(members)
        val.append(members[:n_val])
        train.append(members[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def class_weights(y: np.ndarray, balance: str) -> np.ndarray:
    """Loss weight per class (index 0, 1): ``n / (2 n_c)`` under ``"weighted"``, else ones."""
    if balance != "weighted":
        return np.ones(2, dtype=np.float32)
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=2).astype(np.float64)
    counts = np.maximum(counts, 1.0)
    return (counts.sum() / (2.0 * counts)).astype(np.float32)


def epoch_order(y_units: np.ndarray, balance: str, generator: torch.Generator) -> np.ndarray:
    """The order of training units for one epoch: a permutation, or a class-balanced draw
    with replacement (``"sampler"``) of the same length."""
    n = len(y_units)
    if balance == "sampler":
        counts = np.bincount(y_units, minlength=2).astype(np.float64)
        p = 1.0 / np.maximum(counts[y_units], 1.0)
        draw = torch.multinomial(torch.as_tensor(p, dtype=torch.float64), n, replacement=True,
                                 generator=generator)
        return draw.numpy()
    return torch.randperm(n, generator=generator).numpy()


def chunks(order: np.ndarray, size: int) -> list[np.ndarray]:
    return [order[i:i + size] for i in range(0, len(order), size)]


def weighted_bce(logits: torch.Tensor, targets: torch.Tensor,
                 weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean binary cross-entropy with logits, each term times its unit's weight."""
    loss = nn.functional.binary_cross_entropy_with_logits(
        logits, targets.to(logits.dtype), reduction="none")  # (B,)
    if weights is not None:
        loss = loss * weights  # (B,)
    return loss.mean()


def optimise_step(optimizer: torch.optim.Optimizer, logits: torch.Tensor, targets: torch.Tensor,
                  class_weights: torch.Tensor | None) -> float:
    """One step on the (class-weighted) BCE; returns the loss summed over the batch's units."""
    weights = class_weights[targets.long()] if class_weights is not None else None  # (b,)
    loss = weighted_bce(logits, targets, weights)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item() * len(targets)


# --------------------------------------------------------------------------- metrics


def balanced_log_loss(y: np.ndarray, p: np.ndarray) -> float:
    """Class-balanced log-loss: the mean over classes of each class's mean log-loss."""
    y = np.asarray(y)
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    per_class = [-np.mean(np.log(np.where(y[y == c] == 1, p[y == c], 1 - p[y == c])))
                 for c in (0, 1) if np.any(y == c)]
    return float(np.mean(per_class))


def balanced_accuracy(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> float:
    y = np.asarray(y)
    pred = (np.asarray(p) >= threshold).astype(int)
    recalls = [np.mean(pred[y == c] == c) for c in (0, 1) if np.any(y == c)]
    return float(np.mean(recalls))


def score_validation(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """(class-balanced log-loss, balanced accuracy) of patient probabilities."""
    return balanced_log_loss(y, p), balanced_accuracy(y, p)


# --------------------------------------------------------------------------- collate


def pad_bags(bags: Sequence[torch.Tensor], pad_value: float = 0.0
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack per-patient bags ``(n_i, *rest)`` into ``X (B, N, *rest)`` and ``mask (B, N)``.

    Row ``b`` holds patient ``b``'s instances only, followed by padding (``mask`` False).
    """
    if not bags:
        raise ValueError("no bags to pad")
    n_max = max(int(b.shape[0]) for b in bags)
    rest = tuple(bags[0].shape[1:])
    X = bags[0].new_full((len(bags), n_max, *rest), pad_value)  # (B, N, *rest)
    mask = torch.zeros(len(bags), n_max, dtype=torch.bool)  # (B, N)
    for b, bag in enumerate(bags):
        n = int(bag.shape[0])
        X[b, :n] = bag  # (n, *rest)
        mask[b, :n] = True
    return X, mask


# --------------------------------------------------------------------------- standardisation


def fit_standardizer(rows: np.ndarray, axis: int | tuple[int, ...] = 0
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Mean and scale (std, 1 where constant) over ``axis``; float32."""
    rows = np.asarray(rows, dtype=np.float64)
    mean = rows.mean(axis=axis)
    scale = rows.std(axis=axis)
    scale = np.where(scale > 1e-8, scale, 1.0)
    return mean.astype(np.float32), scale.astype(np.float32)


# --------------------------------------------------------------------------- persistence


def module_arrays(module: nn.Module, prefix: str = "net.") -> dict[str, np.ndarray]:
    """A module's state_dict as numpy arrays (for safetensors; never pickle)."""
    return {prefix + key: value.detach().cpu().contiguous().numpy().copy()
            for key, value in module.state_dict().items()}


def load_module_arrays(module: nn.Module, arrays: dict[str, np.ndarray],
                       prefix: str = "net.") -> None:
    state = {key[len(prefix):]: torch.from_numpy(np.array(value))
             for key, value in arrays.items() if key.startswith(prefix)}
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise LymphomilError(f"the saved weights do not fit the model ({exc})",
                             fix="re-train the model with this version of lymphomil") from None


# --------------------------------------------------------------------------- progress


class _Bar:
    def __init__(self, progress: Any = None, task: Any = None):
        self.progress, self.task = progress, task

    def update(self, **fields: Any) -> None:
        if self.progress is not None:
            self.progress.update(self.task, advance=1, **fields)


@contextlib.contextmanager
def progress_bar(description: str, total: int) -> Iterator[_Bar]:
    """A transient rich bar over epochs on a terminal; a silent stand-in otherwise."""
    from rich.console import Console

    console = Console(stderr=True)
    if not console.is_terminal:
        yield _Bar()
        return
    from rich.errors import LiveError
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, \
        TimeElapsedColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                        console=console, transient=True)
    try:
        progress.start()
    except LiveError:  # another live display that cannot nest: stay silent
        yield _Bar()
        return
    try:
        yield _Bar(progress, progress.add_task(description, total=total, info=""))
    finally:
        progress.stop()


# --------------------------------------------------------------------------- the loop


def fit_loop(module: nn.Module, *, train_epoch: Callable[[int], float],
             validate: Callable[[], tuple[float, float]] | None, max_epochs: int,
             patience: int, description: str = "training") -> tuple[list[dict], int]:
    """Run epochs with early stopping; restore the best epoch's weights.

    ``train_epoch(epoch)`` trains one epoch (the module is in train mode) and returns its mean
    loss; ``validate()`` (module in eval mode, no gradients) returns (val_loss, val_bal_acc) on
    the inner validation patients, or is ``None`` when there are none (then every epoch runs and
    the last weights are kept). Returns (history, best_epoch).
    """
    history: list[dict] = []
    best_loss, best_epoch, best_state, waited = math.inf, 0, None, 0
    with progress_bar(description, max_epochs) as bar:
        for epoch in range(1, max_epochs + 1):
            wall, cpu = time.perf_counter(), time.process_time()
            module.train()
            train_loss = float(train_epoch(epoch))
            val_loss, val_bal = math.nan, math.nan
            if validate is not None:
                module.eval()
                with torch.no_grad():
                    val_loss, val_bal = validate()
            record = {"epoch": epoch, "train_loss": train_loss, "val_loss": float(val_loss),
                      "val_bal_acc": float(val_bal),
                      "seconds": round(time.perf_counter() - wall, 4),
                      "cpu_seconds": round(time.process_time() - cpu, 4)}
            history.append(record)
            logger.debug("%s epoch %d: train_loss %.4f val_loss %.4f val_bal_acc %.3f "
                         "(%.2f s, %.2f CPU s)", description, epoch, train_loss, val_loss,
                         val_bal, record["seconds"], record["cpu_seconds"])
            bar.update(info=f"loss {train_loss:.3f} val {val_loss:.3f}")
            if not math.isfinite(train_loss):
                logger.warning("%s: training loss is %s at epoch %d; stopping", description,
                               train_loss, epoch)
                break
            if validate is None:
                best_epoch = epoch
                continue
            if val_loss < best_loss - 1e-6:
                best_loss, best_epoch, waited = val_loss, epoch, 0
                best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
            else:
                waited += 1
                if waited >= patience:
                    break
    if best_state is not None:
        module.load_state_dict(best_state)
    module.eval()
    total = sum(r["seconds"] for r in history)
    logger.info("%s: %d epoch(s), best %d, %.1f s (%.2f s/epoch)", description, len(history),
                best_epoch, total, total / max(len(history), 1))
    return history, best_epoch


# --------------------------------------------------------------------------- shared model plumbing


def parse_spec(features: Any) -> "FeatureSpec":
    """``FeatureSpec.parse`` with a user-facing error for a malformed string."""
    from lymphomil.features.spec import FeatureSpec

    try:
        return FeatureSpec.parse(features)
    except (ValueError, TypeError) as exc:
        raise LymphomilError(f"features={features!r} is not a feature spec ({exc})",
                             fix='write it as BACKBONE@CROP, e.g. "efficientnet-lite0@112" '
                                 'or "resnet18@224+tta"') from None


_NDIM = {"pooled": 2, "views": 3, "map": 4}


def read_bags(patients: np.ndarray, spec: Any, kind: str,
              n_features: int | None = None) -> list[np.ndarray]:
    """Each patient's cached instance features as float32, shapes and values checked.

    ``n_features``: the feature dimension the model was trained on (checked at predict time).
    """
    bags = []
    for patient in patients:
        bag = np.asarray(patient.bag(spec, kind), dtype=np.float32)
        if bag.ndim != _NDIM[kind] or bag.shape[0] == 0:
            raise LymphomilError(
                f"{kind!r} features of patient {patient.id} have shape {bag.shape}",
                fix="rebuild the feature cache (`lymphomil cache clear`, then "
                    "`lymphomil features`)")
        if n_features is None:
            n_features = int(bag.shape[1])
        elif bag.shape[1] != n_features:
            raise LymphomilError(
                f"patient {patient.id} has {bag.shape[1]}-d features; the model expects "
                f"{n_features}-d", fix="use the same backbone as at training time")
        if not np.isfinite(bag).all():
            raise LymphomilError(f"{kind!r} features of patient {patient.id} hold NaN/inf",
                                 fix="rebuild the feature cache for this patient")
        bags.append(bag)
    return bags


def attribute_matrix(patients: np.ndarray) -> np.ndarray:
    """(n, 3) clinical attributes: age (years), log lymphocyte count, gender (M = 1, F = 0)."""
    return np.array([[p.age, math.log(p.lymph_count), 1.0 if p.gender == "M" else 0.0]
                     for p in patients], dtype=np.float32)


ATTRIBUTE_NAMES = ("age", "log_lymph_count", "gender_male")


class NeuralFeatureModel:
    """Mixin of the neural models on cached features: spec, parameter checks, history.

    Subclasses are :class:`~lymphomil.models.base.PatientModel` s that define ``features``,
    ``lr``, ``weight_decay``, ``batch_size``, ``max_epochs``, ``patience``,
    ``validation_fraction``, ``balance`` and ``random_state`` as constructor arguments.
    """

    feature_kind: str = "pooled"

    def _spec(self) -> "FeatureSpec":
        return parse_spec(self.features)

    def required_features(self) -> list:
        return [(self._spec(), self.feature_kind)]

    def _check_training_params(self) -> None:
        check_float("lr", self.lr, 0.0, low_open=True)
        check_float("weight_decay", self.weight_decay, 0.0)
        check_int("batch_size", self.batch_size)
        check_int("max_epochs", self.max_epochs)
        check_int("patience", self.patience)
        check_float("validation_fraction", self.validation_fraction, 0.0, 0.5)
        check_choice("balance", self.balance, BALANCE)

    def _loop_meta(self) -> dict:
        return {"history": self.history_, "best_epoch": int(self.best_epoch_),
                "seed": int(self.seed_)}

    def _set_loop_meta(self, meta: dict) -> None:
        self.history_ = list(meta.get("history", []))
        self.best_epoch_ = int(meta.get("best_epoch", 0))
        self.seed_ = int(meta.get("seed", 0))
