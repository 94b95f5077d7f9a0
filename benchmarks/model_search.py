"""Search for the default model: candidate configurations under the same repeated 5×5 CV.

Every figure comes from the harness (`lymphomil.evaluation.crossval.cross_validate`), results are
cached (`lymphomil.evaluation.cvcache`), so re-running prints the table at once. The winner becomes
the registered default (`lymphomil.flows.defaults.DEFAULT_MODEL`); the table goes to
docs/results.md.

    python benchmarks/model_search.py [--data ../shared/data/dlmi-lymphocytosis] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from lymphomil.data.cohort import labelled_patients, load_cohort
from lymphomil.evaluation.crossval import format_metric
from lymphomil.flows.cv import run_cv
from lymphomil.models.attributes import AttributeModel
from lymphomil.models.base import create_model
from lymphomil.models.fusion import FusionModel
from lymphomil.runtime.environment import set_threads

REPO = Path(__file__).resolve().parents[1]


def image_logreg(features: str, **kw):
    return create_model("image-logreg", features=features, **kw)


def fusion(image, rule: str = "mean", attribute=None):
    return FusionModel(attribute_model=attribute or AttributeModel(param_grid="compact"),
                       image_model=image, rule=rule)


def candidates() -> dict:
    lite = "efficientnet-lite0@112"
    thin = "resnet50-thin@112"
    mobile = "mobilenet-v2@112"
    return {
        "img-lr-lite0": image_logreg(lite),
        "img-lr-thin": image_logreg(thin),
        "img-lr-mobilenet": image_logreg(mobile),
        "fusion-mean-lite0": fusion(image_logreg(lite)),
        "fusion-mean-thin": fusion(image_logreg(thin)),
        "fusion-mean-mobilenet": fusion(image_logreg(mobile)),
        "fusion-alpha-thin": fusion(image_logreg(thin), "alpha"),
        "fusion-stack-thin": fusion(image_logreg(thin), "stack"),
        "fusion-mean-instance-lite0": fusion(create_model("instance", features=lite)),
        "fusion-mean-thin-tta": fusion(image_logreg(thin + "+tta")),
        "fusion-mean-thin-224": fusion(image_logreg("resnet50-thin@224")),
        "fusion-mean-thin-nimg": fusion(image_logreg(thin),
                                        attribute=AttributeModel(param_grid="compact",
                                                                 use_n_images=True)),
        "fusion-mean-thin-forest": fusion(image_logreg(thin),
                                          attribute=AttributeModel("forest", param_grid="compact")),
        "fusion-mean-thin-meanstd": fusion(image_logreg(thin, pooling="mean+std")),
        "fusion-mean-thin+lite0": fusion(fusion(image_logreg(thin), "mean",
                                                attribute=image_logreg(lite))),
        "fusion-stack-thin+lite0": fusion(fusion(image_logreg(thin), "mean",
                                                 attribute=image_logreg(lite)), "stack"),
        "logreg-nimg": AttributeModel(use_n_images=True),
        "fusion-mean-instance-thin": fusion(create_model("instance", features=thin)),
        "abmil-attr-thin": create_model("abmil-attr", features=thin),
        "fusion-mean-thin-lr+instance": fusion(fusion(create_model("instance", features=thin),
                                                      "mean", attribute=image_logreg(thin))),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/dlmi-lymphocytosis")
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    labelled = labelled_patients(load_cohort(args.data))
    models = candidates()
    names = args.only or list(models)
    from lymphomil.models import base as registry

    print("| model | balanced accuracy | hard subset | ROC AUC | minutes |")
    print("|---|---|---|---|---|")
    for name in names:
        start = time.perf_counter()
        # register on the fly so run_cv can build it by name (and the CV cache keys it)
        if name not in registry._MODELS:
            registry.register_model(name, "model search candidate")(lambda m=models[name]: m)
        (result,) = run_cv([name], labelled.patients, labelled.y, folds=args.folds,
                           repeats=args.repeats, seed=0, use_cv_cache=True)
        s = result.summary()
        print(f"| {name} | {format_metric(s['balanced_accuracy'])} | "
              f"{format_metric(s['hard_balanced_accuracy'])} | {format_metric(s['roc_auc'])} | "
              f"{s['fit_seconds']['total'] / 60:.1f} "
              f"(wall here {time.perf_counter() - start:.0f} s) |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
