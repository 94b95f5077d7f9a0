"""The training loop of every neural patient model and its parts (issue 4, point 6).

* **Early stopping** on an inner validation split carved, stratified and *by patient*, from the
  patients passed to ``fit`` (:func:`inner_split`) — never from anything else. The monitored
  quantity is the class-balanced patient log-loss; the best epoch's weights are restored.
* **Class imbalance**: ``balance`` is ``"none"``, ``"weighted"`` (per-unit loss weights
  ``n / (2 n_class)``) or ``"sampler"`` (each epoch draws its units with replacement, classes
  equally likely).
* **Bookkeeping**: one record per epoch (``epoch, train_loss, val_loss, val_bal_acc, seconds,
  cpu_seconds``) kept in the model's ``history_`` and logged (``logging``, DEBUG per epoch, INFO
  summary); each epoch advances a transient task of the installed progress
  (:mod:`lymphomil.runtime.progress_protocol`; the command line shows a bar on a terminal).
* **Persistence**: a network's weights as named numpy arrays (safetensors; never pickle).

Seeds and parameter checks live in :mod:`lymphomil.models.checks`; reading and padding bags in
:mod:`lymphomil.models.inputs`; the template that runs this loop in :mod:`lymphomil.models.neural`.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Callable

import numpy as np
import torch
from torch import nn

from lymphomil.evaluation.metrics import balanced_accuracy, balanced_log_loss
from lymphomil.models.checks import numpy_rng
from lymphomil.runtime import progress_protocol
from lymphomil.runtime.errors import LymphomilError

logger = logging.getLogger("lymphomil.models")


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


def score_validation(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """(class-balanced log-loss, balanced accuracy) of patient probabilities."""
    return balanced_log_loss(y, p), float(balanced_accuracy(np.asarray(p) >= 0.5, np.asarray(y)))


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
    with progress_protocol.task(description, max_epochs, "epochs", transient=True) as advance:
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
            advance(1, f"loss {train_loss:.3f} val {val_loss:.3f}")
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


