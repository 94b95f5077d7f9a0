"""Batched, streaming instance-feature extraction on the CPU (the engine behind the cache).

Why it is built this way (2-core CPU, docs/design.md §3):

* **Streams, not a decode pool + one multi-threaded model.** ``workers`` threads each take the
  next batch of images (across patient boundaries), decode it (libjpeg-turbo releases the GIL),
  and run the network on it with one intra-op thread. While one stream decodes, the other
  computes, so decoding overlaps inference without OpenMP threads fighting decode threads for
  the two cores.
* **Small fixed batches in channels-last, bf16 autocast where the CPU has bf16 instructions**:
  batch 16 stays in cache; the last batch is zero-padded to the full size so every image goes
  through the same kernels and a patient's features do not depend on its batch neighbours.
* **Streaming**: images are read lazily, at most ``workers`` batches are in flight, and a patient
  is handed to ``on_patient`` (which writes its cache files) as soon as its last image is done:
  memory stays flat as the cohort grows, and a killed run keeps every finished patient.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from lymphomil.data.issues import DataIssue
from lymphomil.features.backbones import Backbone, map_and_pooled
from lymphomil.features.env import PRECISIONS, bf16_supported, cpu_count, resolve_precision  # noqa: F401
from lymphomil.features.preprocess import (
    TTA_VIEWS,
    centre_crop,
    decode_image,
    flip_view,
    make_preprocess,
)
from lymphomil.features.trunk import split_trunk
from lymphomil.runtime.errors import LymphomilError

DISK_KINDS = ("pooled", "views", "map", "trunk")


@dataclass
class Job:
    """One patient to extract: its id and its images in bag order."""

    key: str
    paths: Sequence[Path]
    context: object = None  # handed back to on_patient (the cache passes its file plan)


@dataclass
class _Pending:
    job: Job
    arrays: dict[str, np.ndarray]
    remaining: int
    bad: list[int] = field(default_factory=list)


class Extractor:
    """Runs one backbone over many images; see the module docstring for the design."""

    def __init__(self, backbone: Backbone, crop: int, precision: str = "fp32",
                 kinds: Sequence[str] = ("pooled",), batch_size: int = 16,
                 workers: int | None = None, on_error: str = "raise",
                 threads_per_stream: int | None = None):
        unknown = set(kinds) - set(DISK_KINDS)
        if unknown:
            raise LymphomilError(f"unknown feature kind(s) {sorted(unknown)}",
                                 fix=f"use {', '.join(DISK_KINDS)}")
        if on_error not in ("raise", "skip"):
            raise LymphomilError(f"unknown on_error policy {on_error!r}",
                                 fix="use --on-error raise or --on-error skip")
        self.backbone = backbone
        self.crop = int(crop)
        self.precision = resolve_precision(precision)
        self.kinds = tuple(k for k in DISK_KINDS if k in kinds)
        self.batch_size = max(1, int(batch_size))
        self.workers = max(1, int(workers or cpu_count()))
        # one intra-op thread per stream by default (streams = cores): the numerics then do not
        # depend on where a stream runs (a thread here, a Ray worker process elsewhere)
        self.threads_per_stream = max(1, int(threads_per_stream or cpu_count() // self.workers))
        self.on_error = on_error
        self.preprocess = make_preprocess(self.crop, backbone.mean, backbone.std)
        # an inference copy: BatchNorm folded into the convs, channels-last (backbone untouched);
        # a network may offer a faster fp32 copy of its own (dinov2-s: oneDNN-packed linears)
        model = fold_batchnorm(backbone.model, self.crop)
        faster = getattr(model, "for_cpu_inference", None)
        if faster is not None and self.precision == "fp32":
            model = faster(self.batch_size, self.crop)
        self.model = model.to(memory_format=torch.channels_last)
        self.issues: list[DataIssue] = []
        self._map_shape: tuple[int, ...] | None = None
        self._trunk_shape: tuple[int, ...] | None = None
        self._split = None
        if "trunk" in self.kinds:  # the front's output is cached; tail(front(x)) is the map

            self._split = split_trunk(backbone.name, self.model)

    # ---------------------------------------------------------------- the network

    def map_shape(self) -> tuple[int, int, int]:
        """(d, h, w) of one image's feature map at this crop."""
        if self._map_shape is None:
            with torch.inference_mode():
                probe = torch.zeros(1, 3, self.crop, self.crop)
                self._map_shape = tuple(self.backbone.forward_map(probe).shape[1:])
        return self._map_shape  # type: ignore[return-value]

    def trunk_shape(self) -> tuple[int, int, int]:
        """(d, h, w) of one image's trunk activation (the front's output) at this crop."""
        if self._trunk_shape is None:
            with torch.inference_mode():
                probe = torch.zeros(1, 3, self.crop, self.crop)
                self._trunk_shape = tuple(self._split[0](probe).shape[1:])
        return self._trunk_shape  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Normalised (B, 3, c, c) -> {"pooled": (B, p), "views": (8, B, p), "map": (B, d, h, w)}.

        ``pooled`` is the backbone's own pooling (:func:`~lymphomil.features.backbones.
        map_and_pooled`: the map's mean for a CNN, CLS + mean patch token for a ViT); ``views``
        the pooled vector of each of the 8 dihedral views (:data:`TTA_VIEWS`, the plain view
        first). Call inside ``torch.inference_mode()``; autocast is applied here.
        """
        x = x.contiguous(memory_format=torch.channels_last)
        out: dict[str, torch.Tensor] = {}
        views = TTA_VIEWS if "views" in self.kinds else TTA_VIEWS[:1]
        pooled_views = []
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            for view in views:
                image = flip_view(x, view).contiguous(memory_format=torch.channels_last)
                if view == "none" and self._split is not None:
                    front, tail = self._split
                    trunk = front(image)  # (B, d_t, h_t, w_t)
                    out["trunk"] = trunk.float()
                    fmap = tail(trunk).float()  # (B, d, h, w): the same modules as model(x)
                    pooled = fmap.mean(dim=(2, 3))  # (B, d)
                else:
                    fmap, pooled = map_and_pooled(self.model, image)  # (B, d, h, w), (B, p)
                if view == "none" and "map" in self.kinds:
                    out["map"] = fmap
                pooled_views.append(pooled)
        out["pooled"] = pooled_views[0]
        if "views" in self.kinds:
            out["views"] = torch.stack(pooled_views)  # (8, B, p)
        return out

    def new_batch(self) -> torch.Tensor:
        """A zeroed uint8 (B, 3, c, c) batch in channels-last memory, the layout the network
        runs in: a decoded image (height-width-channel memory) is copied in row by row, and
        nothing is reordered again before the first convolution."""
        nhwc = torch.zeros(self.batch_size, self.crop, self.crop, 3, dtype=torch.uint8)
        return nhwc.permute(0, 3, 1, 2)  # (B, 3, c, c) view, channels-last strides

    def _decode_batch(self, items: list[tuple[int, int, str | Path]],
                      record: Callable) -> torch.Tensor:
        """Decode and centre-crop a batch into one preallocated uint8 tensor (zero padding)."""
        batch = self.new_batch()  # (B, 3, c, c) channels-last
        for row, (job_index, image_index, path) in enumerate(items):
            try:
                batch[row].copy_(centre_crop(decode_image(path), self.crop))  # (3, c, c)
            except LymphomilError as exc:
                if self.on_error == "raise":
                    raise
                record(job_index, image_index, exc)
        return batch  # (B, 3, c, c) uint8; rows past len(items) stay zero

    # ---------------------------------------------------------------- the run

    def run(self, jobs: Sequence[Job],
            on_patient: Callable[[Job, dict[str, np.ndarray], list[int]], None],
            on_images: Callable[[int], None] | None = None) -> None:
        """Extract every job's images; ``on_patient(job, arrays, bad_indices)`` per finished
        patient (called from one writer thread, so file I/O never stalls the streams),
        ``on_images(n)`` per batch."""
        jobs = [job for job in jobs if len(job.paths)]
        if not jobs:
            return
        dim = self.backbone.pooled_dim
        map_shape = self.map_shape() if "map" in self.kinds else None
        if "trunk" in self.kinds:
            self.trunk_shape()
        lock = threading.Lock()
        progress_lock = threading.Lock()
        pending: dict[int, _Pending] = {}
        errors: list[BaseException] = []
        stop = threading.Event()
        batches = self._batches(jobs)
        finished: queue.Queue = queue.Queue(maxsize=4 * self.workers)
        threads_per_stream = self.threads_per_stream

        def record(job_index: int, image_index: int, exc: LymphomilError) -> None:
            with lock:
                pending_job = self._pending(pending, jobs, job_index, dim, map_shape)
                pending_job.bad.append(image_index)
                self.issues.append(DataIssue(exc.problem, exc.fix or "", file=exc.file,
                                             patient_id=jobs[job_index].key))

        def hand_over(entry: _Pending) -> None:
            while not stop.is_set():
                try:
                    finished.put(entry, timeout=0.1)
                    return
                except queue.Full:
                    continue

        def stream() -> None:
            torch.set_num_threads(threads_per_stream)  # OpenMP's thread count is per thread
            try:
                with torch.inference_mode():
                    while not stop.is_set():
                        with lock:
                            items = next(batches, None)
                        if items is None:
                            return
                        x = self.preprocess(self._decode_batch(items, record))  # (B, 3, c, c)
                        out = {k: v[:, :len(items)] if k == "views" else v[:len(items)]
                               for k, v in self.forward(x).items()}
                        done = []
                        with lock:
                            for row, (job_index, image_index, _) in enumerate(items):
                                entry = self._pending(pending, jobs, job_index, dim, map_shape)
                                for kind, tensor in out.items():
                                    target = entry.arrays[kind]
                                    if kind == "views":
                                        target[:, image_index] = tensor[:, row].numpy()
                                    else:
                                        target[image_index] = tensor[row].numpy()
                                entry.remaining -= 1
                                if entry.remaining == 0:
                                    done.append(pending.pop(job_index))
                        if on_images is not None:
                            with progress_lock:
                                on_images(len(items))
                        for entry in done:
                            hand_over(entry)
            except BaseException as exc:  # surfaced in the calling thread
                errors.append(exc)
                stop.set()

        def writer() -> None:
            while True:
                entry = finished.get()
                if entry is None:
                    return
                if errors:
                    continue  # drain after a failure (an interrupt still writes finished patients)
                try:
                    on_patient(entry.job, entry.arrays, sorted(entry.bad))
                except BaseException as exc:
                    errors.append(exc)
                    stop.set()

        previous_threads = torch.get_num_threads()
        threads = [threading.Thread(target=stream, name=f"lymphomil-extract-{i}", daemon=True)
                   for i in range(self.workers)]
        writer_thread = threading.Thread(target=writer, name="lymphomil-writer", daemon=True)
        try:
            writer_thread.start()
            for thread in threads:
                thread.start()
            for thread in threads:
                while thread.is_alive():
                    thread.join(timeout=0.2)
        except BaseException:
            stop.set()
            for thread in threads:
                thread.join()
            raise
        finally:
            finished.put(None)  # the writer finishes what was handed over, then stops
            while writer_thread.is_alive():
                writer_thread.join(timeout=0.2)
            torch.set_num_threads(previous_threads)
        if errors:
            raise errors[0]

    def _batches(self, jobs: Sequence[Job]) -> Iterator[list[tuple[int, int, str | Path]]]:
        batch: list[tuple[int, int, str | Path]] = []
        for job_index, job in enumerate(jobs):
            for image_index, path in enumerate(job.paths):
                batch.append((job_index, image_index, path))
                if len(batch) == self.batch_size:
                    yield batch
                    batch = []
        if batch:
            yield batch

    def _pending(self, pending: dict[int, _Pending], jobs: Sequence[Job], job_index: int, dim: int,
                 map_shape: tuple[int, ...] | None) -> _Pending:
        entry = pending.get(job_index)
        if entry is None:
            n = len(jobs[job_index].paths)
            arrays = {"pooled": np.empty((n, dim), np.float32)}
            if "views" in self.kinds:
                arrays["views"] = np.empty((len(TTA_VIEWS), n, dim), np.float32)
            if "map" in self.kinds:
                arrays["map"] = np.empty((n, *map_shape), np.float32)
            if "trunk" in self.kinds:
                arrays["trunk"] = np.empty((n, *self.trunk_shape()), np.float32)
            entry = pending[job_index] = _Pending(jobs[job_index], arrays, n)
        return entry


def model_only_rate(extractor: Extractor, images: torch.Tensor, repeats: int = 1) -> float:
    """Images/s of normalisation + network on uint8 (N, 3, H, W) images already in memory and
    already cropped (exactly what :meth:`Extractor.run` feeds the network), with the same
    streams, batch size, precision and kinds: the ceiling for the end-to-end rate."""
    size = extractor.batch_size
    images = centre_crop(images, extractor.crop)  # (N, 3, c, c)
    chunks = []
    for start in range(0, len(images), size):  # what the streams feed the model: padded batches
        part = images[start:start + size]
        chunk = extractor.new_batch()  # in the same channels-last layout
        chunk[:len(part)].copy_(part)
        chunks.append(chunk)
    lock = threading.Lock()

    def stream(queue: list) -> None:
        torch.set_num_threads(max(1, cpu_count() // extractor.workers))
        with torch.inference_mode():
            while True:
                with lock:
                    if not queue:
                        return
                    chunk = queue.pop()
                extractor.forward(extractor.preprocess(chunk))

    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, cpu_count() // extractor.workers))
    try:
        stream([chunks[0]])  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            queue = list(chunks)
            threads = [threading.Thread(target=stream, args=(queue,))
                       for _ in range(extractor.workers)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        elapsed = time.perf_counter() - start
    finally:
        torch.set_num_threads(previous)
    return repeats * len(images) / elapsed


# --------------------------------------------------------------------------- inference copy


def _bn_replacement(bn: torch.nn.Module) -> torch.nn.Module | None:
    """What a batch-norm becomes once folded: nothing, or its fused activation (timm)."""
    if type(bn) is torch.nn.BatchNorm2d:
        return torch.nn.Identity()
    drop, act = getattr(bn, "drop", None), getattr(bn, "act", None)
    if isinstance(drop, torch.nn.Module) and isinstance(act, torch.nn.Module):
        return torch.nn.Sequential(drop, act)  # timm BatchNormAct2d: keep what follows the norm
    return None


def fold_batchnorm(model: torch.nn.Module, crop: int, tolerance: float = 1e-4) -> torch.nn.Module:
    """An inference copy of ``model`` with every eval-mode BatchNorm folded into the conv that
    feeds it (about a fifth of EfficientNet-Lite0's CPU time).

    Conv -> BN pairs are found by running the network once with hooks (the BN's input *is* the
    conv's output), so it works on any architecture without per-model code; the folded copy is
    checked against the original on a random batch and discarded if it does not agree.
    """
    import copy

    folded = copy.deepcopy(model).eval()
    names = {id(m): n for n, m in folded.named_modules()}
    last: dict[str, object] = {"conv": None, "out": None}
    pairs: list[tuple[torch.nn.Conv2d, torch.nn.BatchNorm2d]] = []

    def after_conv(module, _inputs, output):
        last["conv"], last["out"] = module, output

    def before_bn(module, inputs):
        conv = last["conv"]
        if (inputs and inputs[0] is last["out"] and conv is not None
                and conv.out_channels == module.num_features and module.track_running_stats
                and _bn_replacement(module) is not None):
            pairs.append((conv, module))

    hooks = []
    for module in folded.modules():
        if isinstance(module, torch.nn.Conv2d):
            hooks.append(module.register_forward_hook(after_conv))
        elif isinstance(module, torch.nn.BatchNorm2d):
            hooks.append(module.register_forward_pre_hook(before_bn))
    probe = torch.randn(2, 3, crop, crop, generator=torch.Generator().manual_seed(0))
    try:
        with torch.inference_mode():
            reference = model.eval()(probe)  # (2, d, h, w)
            folded(probe)
    finally:
        for hook in hooks:
            hook.remove()
    seen: set[int] = set()
    with torch.no_grad():
        for conv, bn in pairs:
            if id(bn) in seen or id(conv) in {id(b) for _, b in pairs}:
                continue
            seen.add(id(bn))
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else \
                1.0 / torch.sqrt(bn.running_var + bn.eps)
            shift = (bn.bias if bn.affine else 0.0) - bn.running_mean * scale
            conv.weight.mul_(scale.view(-1, 1, 1, 1))
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            conv.bias = torch.nn.Parameter(bias * scale + shift)
            parent_name, _, child = names[id(bn)].rpartition(".")
            parent = folded.get_submodule(parent_name) if parent_name else folded
            setattr(parent, child, _bn_replacement(bn))
        with torch.inference_mode():
            check = folded(probe)
    error = (check - reference).abs().max() / reference.abs().max().clamp_min(1e-6)
    return folded if bool(error < tolerance) else copy.deepcopy(model).eval()
