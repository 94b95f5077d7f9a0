"""Do the OOD checks catch simulated shifts of held-out patients? (issue 25, item 3)

A stratified patient-level split of the labelled patients (5 folds, seed 0). On the first
``--shift-folds`` folds: the default model (fusion-mean) and the OOD checks
(:class:`lymphomil.ood.OODCheck`) are fitted on the training part; each held-out patient's images
(``--images`` of them, evenly spread over its bag, to keep the run to minutes on a shared 2-core
CPU) are shifted in memory (stain/hue, blur, JPEG re-compression, rescaling, no lymphocyte,
synthetic-cohort cells) and their default features (resnet50-thin@112) extracted in memory. Per
shift and severity: mean |ΔP(malignant)| between the clean and the shifted patient, the AUROC of
the OOD score for shifted vs clean held-out patients (the clean ones on the same image subset),
and the share of shifted patients flagged. Then, on all folds with full bags, the share of clean
held-out patients flagged (nothing of a fold's held-out patients is used to set its thresholds).

Example: python benchmarks/ood_shift.py /work/shared/data/dlmi-lymphocytosis
"""

from __future__ import annotations

import argparse
import collections
import os
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "dlmi-lymphocytosis"
FEATURES = "resnet50-thin@112"


# --------------------------------------------------------------------------- shifts
# Each takes and returns uint8 (N, 3, 224, 224) images.


def hue(images: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate the hue (YIQ chroma plane) by ``degrees``: another stain's colour."""
    to_yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322],
                       [0.211, -0.523, 0.312]])
    angle = np.deg2rad(degrees)
    turn = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)],
                     [0, np.sin(angle), np.cos(angle)]])
    matrix = np.linalg.inv(to_yiq) @ turn @ to_yiq
    out = np.einsum("ij,njhw->nihw", matrix, images.astype(np.float32))
    return np.clip(out.round(), 0, 255).astype(np.uint8)


def blur(images: np.ndarray, sigma: float) -> np.ndarray:
    from scipy import ndimage

    return ndimage.gaussian_filter(images, sigma=(0, 0, sigma, sigma))


def jpeg(images: np.ndarray, quality: int) -> np.ndarray:
    import simplejpeg

    out = np.empty_like(images)
    for i, image in enumerate(images):
        data = simplejpeg.encode_jpeg(np.ascontiguousarray(image.transpose(1, 2, 0)),
                                      quality=int(quality), colorspace="RGB")
        out[i] = simplejpeg.decode_jpeg(data, "RGB").transpose(2, 0, 1)
    return out


def rescale(images: np.ndarray, factor: float) -> np.ndarray:
    """Zoom by ``factor`` about the centre (another magnification), back to 224 px: cropped
    when larger, mirror-padded when smaller."""
    from scipy import ndimage

    side = images.shape[-1]
    zoomed = ndimage.zoom(images.astype(np.float32), (1, 1, factor, factor), order=1)
    size = zoomed.shape[-1]
    if size >= side:
        start = (size - side) // 2
        zoomed = zoomed[..., start:start + side, start:start + side]
    else:
        before = (side - size) // 2
        pad = ((0, 0), (0, 0), (before, side - size - before), (before, side - size - before))
        zoomed = np.pad(zoomed, pad, mode="reflect")
    return np.clip(zoomed.round(), 0, 255).astype(np.uint8)


def no_lymphocyte(images: np.ndarray, patch: int = 96) -> np.ndarray:
    """Each image replaced by its least dark corner (red cells and background), mirror-tiled
    to 224 px: what a smear field without a lymphocyte looks like, at the same scale."""
    side = images.shape[-1]
    out = np.empty_like(images)
    for i, image in enumerate(images):
        corners = [image[:, :patch, :patch], image[:, :patch, -patch:],
                   image[:, -patch:, :patch], image[:, -patch:, -patch:]]
        corner = max(corners, key=lambda c: np.percentile(c.min(axis=0), 2))
        reps = -(-side // patch)
        tiles = np.concatenate([corner, corner[:, ::-1]] * reps, axis=1)[:, :side]
        tiles = np.concatenate([tiles, tiles[:, :, ::-1]] * reps, axis=2)[:, :, :side]
        out[i] = tiles
    return out


def synthetic_cells(n: int, seed: int) -> np.ndarray:
    """``n`` cell images of the synthetic cohort (lymphomil.data.synth), decoded."""
    from lymphomil.data.synth import draw_patients, patient_images
    from lymphomil.features.preprocess import decode_bytes

    per = 16
    people = draw_patients(max(2, -(-n // per)), seed, 0.0, (per, per))
    images = []
    for i, person in enumerate(people):
        for data in patient_images(person, np.random.SeedSequence([seed, i])):
            images.append(decode_bytes(data).numpy())
    return np.stack(images[:n])


def with_synthetic(images: np.ndarray, share: float, bank: np.ndarray, offset: int
                   ) -> np.ndarray:
    """The first ``share`` of a patient's images replaced by synthetic-cohort cells."""
    out = images.copy()
    k = round(share * len(images))
    for j in range(k):
        out[j] = bank[(offset + j) % len(bank)]
    return out


SHIFTS = {  # name -> (severities, function(images, severity))
    "stain (hue rotation °)": ((20, 60), hue),
    "blur (Gaussian σ px)": ((1.0, 2.5), blur),
    "JPEG re-compression (quality)": ((20, 5), jpeg),
    "rescale (×)": ((0.7, 1.4), rescale),
    "no lymphocyte": ((1,), lambda images, _: no_lymphocyte(images)),
}
SYNTH = "synthetic cells (share of images)"
SYNTH_SHARES = (0.25, 1.0)


# --------------------------------------------------------------------------- features


class InMemoryFeatures:
    """resnet50-thin@112 pooled features of uint8 images held in memory (the extractor's own
    inference copy, the same crop and normalisation as the feature cache)."""

    def __init__(self) -> None:
        from lymphomil.features.backbones import create_backbone
        from lymphomil.features.extract import Extractor
        from lymphomil.features.spec import FeatureSpec

        spec = FeatureSpec.parse(FEATURES)
        self.extractor = Extractor(create_backbone(spec.backbone), spec.crop, workers=1,
                                   threads_per_stream=os.cpu_count() or 1)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        import torch

        from lymphomil.features.preprocess import centre_crop

        ex = self.extractor
        rows = []
        with torch.inference_mode():
            for start in range(0, len(images), ex.batch_size):
                part = centre_crop(torch.from_numpy(images[start:start + ex.batch_size]), ex.crop)
                batch = ex.new_batch()
                batch[:len(part)].copy_(part)
                rows.append(ex.forward(ex.preprocess(batch))["pooled"][:len(part)].numpy())
        return np.concatenate(rows)


# --------------------------------------------------------------------------- the run


def auroc(clean: np.ndarray, shifted: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.zeros(len(clean)), np.ones(len(shifted))]
    return float(roc_auc_score(y, np.r_[clean, shifted]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", nargs="?", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--shift-folds", type=int, default=1,
                        help="folds whose held-out patients are shifted (each ~2–4 min here)")
    parser.add_argument("--images", type=int, default=6,
                        help="images per held-out patient that are shifted and re-extracted")
    parser.add_argument("--clean-folds", type=int, default=None,
                        help="folds on which clean held-out patients are checked (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="one severity per shift (the strongest), for a smoke run")
    args = parser.parse_args()

    import torch
    from sklearn.model_selection import StratifiedKFold

    import lymphomil
    from lymphomil.features.in_memory import InMemoryStore
    from lymphomil.features.preprocess import decode_image
    from lymphomil.ood import OODCheck, image_stats, spread_indices

    torch.set_num_threads(os.cpu_count() or 1)
    started = time.perf_counter()
    cohort = lymphomil.load_cohort(args.data, check_images=False)
    patients = lymphomil.with_features(cohort.labelled, "fusion-mean")
    y = lymphomil.labels_of(patients)
    splits = list(StratifiedKFold(args.folds, shuffle=True, random_state=args.seed)
                  .split(np.zeros(len(y)), y))
    extract = InMemoryFeatures()
    bank = synthetic_cells(64, args.seed)
    rows: dict[tuple[str, object], dict[str, list]] = collections.defaultdict(
        lambda: collections.defaultdict(list))
    clean_flags: list[bool] = []
    clean_reasons: list[str] = []
    subset_flags: list[bool] = []
    shifts = {name: ((sev[-1],) if args.quick else sev, fn) for name, (sev, fn) in SHIFTS.items()}
    for k, (train, test) in enumerate(splits[:args.clean_folds or args.folds]):
        t0 = time.perf_counter()
        check = OODCheck(features=FEATURES, random_state=args.seed).fit(patients[train])
        full = check.check(patients[test])
        clean_flags += [r.flagged for r in full]
        clean_reasons += [reason for r in full for reason in r.reasons]
        print(f"fold {k + 1}: OOD fit + check {time.perf_counter() - t0:.0f} s, "
              f"{sum(r.flagged for r in full)}/{len(full)} clean held-out flagged", flush=True)
        if k >= args.shift_folds:
            continue
        model = lymphomil.create_model("fusion-mean").fit(patients[train], y[train])
        held = patients[test]
        subsets = [spread_indices(p.n_images, args.images) for p in held]
        clean = [np.stack([decode_image(p.image_paths[i]).numpy() for i in idx])
                 for p, idx in zip(held, subsets)]

        def score(images: list[np.ndarray], held=held, model=model, check=check
                  ) -> tuple[np.ndarray, list]:
            store = InMemoryStore()
            for p, x in zip(held, images):
                store.put(p.id, FEATURES, "pooled", extract(x))
            moved = np.array([p.with_features(store) for p in held], dtype=object)
            stats = {p.id: np.stack([image_stats(im) for im in x]) for p, x in zip(held, images)}
            return model.predict_proba(moved)[:, 1], check.check(moved, image_stats=stats)

        clean_p, clean_r = score(clean)
        clean_s = np.array([r.score for r in clean_r])
        subset_flags += [r.flagged for r in clean_r]
        settings = [(name, sev, fn) for name, (sevs, fn) in shifts.items() for sev in sevs]
        settings += [(SYNTH, share, None) for share in ((1.0,) if args.quick else SYNTH_SHARES)]
        for name, sev, fn in settings:
            t1 = time.perf_counter()
            if fn is None:
                shifted = [with_synthetic(x, sev, bank, 7 * i) for i, x in enumerate(clean)]
            else:
                shifted = [fn(x, sev) for x in clean]
            p, results = score(shifted)
            row = rows[(name, sev)]
            row["dp"] += list(np.abs(p - clean_p))
            row["clean"] += list(clean_s)
            row["shifted"] += [r.score for r in results]
            row["flagged"] += [r.flagged for r in results]
            row["checks"] += [max((c for c in r.checks if r.checks[c] > 1),
                                  key=r.checks.get, default="—") for r in results]
            row["fired"] += [[c for c in r.checks if r.checks[c] > 1] for r in results]
            print(f"  {name} {sev}: {time.perf_counter() - t1:.0f} s", flush=True)

    n_clean = len(clean_flags)
    print(f"\n{len(patients)} labelled patients, {args.folds}-fold split (seed {args.seed}); "
          f"shifts on {args.shift_folds} fold(s) ({len(rows[next(iter(rows))]['dp'])} held-out "
          f"patients, {args.images} images each); {time.perf_counter() - started:.0f} s\n")
    print("| shift | severity | mean \\|ΔP\\| | AUROC (OOD score) | shifted flagged | "
          "main check | checks that fire (share of shifted patients) |")
    print("|---|---|---|---|---|---|---|")
    for (name, sev), row in rows.items():
        top = collections.Counter(row["checks"]).most_common(1)[0][0]
        fired = collections.Counter(c for names in row["fired"] for c in names)
        share = ", ".join(f"{c} {100 * m / len(row['fired']):.0f} %"
                          for c, m in fired.most_common())
        print(f"| {name} | {sev:g} | {np.mean(row['dp']):.3f} | "
              f"{auroc(np.array(row['clean']), np.array(row['shifted'])):.3f} | "
              f"{100 * np.mean(row['flagged']):.0f} % | {top} | {share or '—'} |")
    print(f"\nclean held-out patients flagged: {sum(clean_flags)}/{n_clean} "
          f"({100 * np.mean(clean_flags):.1f} %, all {args.folds} folds, full bags); on the "
          f"{args.images}-image subsets of the shift folds: {sum(subset_flags)}/"
          f"{len(subset_flags)}")
    if clean_reasons:
        print("reasons given for clean patients:")
        for reason in clean_reasons:
            print(f"  - {reason}")


if __name__ == "__main__":
    main()
