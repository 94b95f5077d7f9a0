"""Feature commands: ``features`` (extract and cache instance features) and ``cache info|clear``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal, Optional

import typer
from rich.table import Table

from lymphomil.commands.app import (
    CACHE_DEFAULT,
    RAY_EXTRA,
    EngineName,
    OnError,
    app,
    cache_app,
    console,
    err_console,
    handle_errors,
    show,
)
from lymphomil.flows import options  # light: checks import what they need when they run
from lymphomil.runtime.errors import LymphomilError

#: ``--cache-dir`` of ``cache info`` and ``cache clear``
#: (one option object, as commands/common.py has for the model commands)
CACHE_DIR_OPT = typer.Option(None, "--cache-dir", help="Cache folder (as for `features`).",
                             show_default=CACHE_DEFAULT)


def _human_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"  # pragma: no cover


def _parse_kinds(text: str, KINDS: tuple[str, ...]) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in KINDS]
    if not kinds or unknown:
        raise LymphomilError(f"unknown feature kind(s) {', '.join(unknown) or repr(text)}",
                             fix=f"use a comma-separated list of {', '.join(KINDS)}")
    return kinds


#: --help's words for the defaults (the values come from the default model: _defaults)
DEFAULT_FEATURES = "without --backbone: the default model's features"


def _defaults(backbone: str | None, crop: int | None, weights: str | None,
              kinds: str | None, default_crop: int,
              pairs: list | None) -> tuple[str, int, str, str]:
    """No --backbone: the features the default model reads (``pairs``: what `run` and `train`
    then find in the cache), each given option on top; a named backbone: crop 112, ImageNet
    weights, pooled."""
    if backbone is None:
        if pairs:
            spec = pairs[0][0]
            same = [k for s, k in pairs if s == spec]
            return (spec.backbone, spec.crop if crop is None else crop,
                    spec.weights if weights is None else weights,
                    ",".join(same) if kinds is None else kinds)
        backbone = "efficientnet-lite0"  # an attributes-only default model reads no features
    return (backbone, default_crop if crop is None else crop,
            "imagenet" if weights is None else weights, "pooled" if kinds is None else kinds)


@app.command()
@handle_errors
def features(
    data: Optional[Path] = typer.Argument(None, help="The cohort folder (challenge layout)."),
    backbone: Optional[str] = typer.Option(None, "--backbone",
                                           help="Backbone name (see `lymphomil features "
                                                "--list`).", show_default=DEFAULT_FEATURES),
    crop: Optional[int] = typer.Option(None, "--crop", help="Centre crop in pixels (224 = whole "
                                                            "image).",
                                       show_default=DEFAULT_FEATURES + "; else 112"),
    tta: bool = typer.Option(False, "--tta/--no-tta",
                             help="Also extract the 8 dihedral views (flips and rotations; "
                                  "test-time augmentation, 8x the cost)."),
    precision: Literal["fp32", "bf16", "auto"] = typer.Option("fp32", "--precision",
                                  help="fp32 (what the models use by default), bf16, or auto "
                                       "(bf16 where the CPU supports it)."),
    weights: Optional[str] = typer.Option(None, "--weights",
                                          help="imagenet, none (random init) or a state_dict "
                                               "file.", show_default=DEFAULT_FEATURES
                                                                     + "; else imagenet"),
    workers: Optional[int] = typer.Option(None, "--workers", help="Parallel extraction streams.",
                                          show_default="one per core"),
    batch_size: int = typer.Option(16, "--batch-size",
                                   help="Images per forward pass; another value than 16 keeps "
                                        "its features apart (the numbers move in the 6th "
                                        "decimal): the models read those of 16."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir",
                                             help="Cache folder; features go in features/ "
                                                  "under it.", show_default=CACHE_DEFAULT),
    kinds: Optional[str] = typer.Option(None, "--kinds", help="pooled, views, map and/or trunk "
                                        "(before the last stage: mil-trunk, topk-trunk), "
                                        "comma-separated.",
                                        show_default=DEFAULT_FEATURES + "; else pooled"),
    on_error: OnError = typer.Option("raise", "--on-error",
                                 help="raise: stop at the first bad row or image; skip: leave it "
                                      "out and list it."),
    list_names: bool = typer.Option(False, "--list", help="List the backbones and exit."),
    engine: EngineName = typer.Option("local", "--engine",
                                      help="local, or ray: extraction tasks on a Ray cluster "
                                           "(RAY_ADDRESS, or a local Ray); the cache folder "
                                           f"must be the same path on every node; {RAY_EXTRA}."),
) -> None:
    """Extract the instance features of every cell image once, into the feature cache.

    A second run is a cache hit; a killed run resumes; a changed image recomputes its patient only.

    Example: lymphomil features ../shared/data/dlmi-lymphocytosis   (the default model's features)
    Another backbone: lymphomil features DATA --backbone efficientnet-lite0 --crop 112
    """
    # deferred for start-up time (see lymphomil.commands.common): no torch, no model family
    from lymphomil import features as instance_features
    from lymphomil import outputs
    from lymphomil.data.cohort import load_cohort
    from lymphomil.runtime import engines

    if list_names:
        from lymphomil.features.backbones import describe_backbones  # torch: --list only

        table = Table(title="backbones", title_justify="left")
        table.add_column("name")
        table.add_column("description")
        for name, text in describe_backbones().items():
            table.add_row(name, text)
        console.print(table)
        return
    if data is None:
        raise LymphomilError("no data folder given",
                             fix="lymphomil features DATA (the challenge folder), or --list")
    pairs = None
    if backbone is None:
        # deferred further: pydantic and the default model's family, only here
        from lymphomil.flows.config import default_model_features

        pairs = default_model_features()
    backbone, crop, weights, kinds = _defaults(backbone, crop, weights, kinds,
                                               instance_features.spec.DEFAULT_CROP, pairs)
    # every option before any work: a 5000 px crop once ran a 5000x5000 probe through the network
    options.check_crop(crop)
    options.check_batch_size(batch_size)
    options.check_workers(workers)
    options.check_in_flight(workers, batch_size)
    options.check_backbone(backbone)
    outputs.check_cache_location(cache_dir, data)
    wanted = _parse_kinds(kinds, instance_features.KINDS)
    if tta and "views" not in wanted:
        wanted = wanted + ("views",)
    resolved = instance_features.resolve_precision(precision)
    spec = instance_features.FeatureSpec(backbone=backbone, weights=weights, crop=crop, tta=tta,
                                         precision=resolved)
    start = time.perf_counter()
    # images are checked where they are decoded (the extractor applies --on-error); a cached
    # patient's images were decoded already, so a warm run need not open 14,000 files again
    cohort = load_cohort(data, on_error=on_error, check_images=False)
    for issue in cohort.issues:
        err_console.print(f"[yellow]skipped[/]: {show(issue.file or '')}: "
                          f"{show(issue.problem)}",
                          highlight=False, soft_wrap=True)
    loaded = time.perf_counter()
    cache = instance_features.FeatureCache(instance_features.cache.feature_root(cache_dir),
                                           workers=workers, batch_size=batch_size,
                                           on_error=on_error)
    if engine == "ray" and workers is not None:
        err_console.print("[yellow]note[/]: --workers is ignored under --engine ray: each Ray task "
                          "runs one extraction stream, and the cluster's CPUs set how many run at "
                          "once", highlight=False, soft_wrap=True)
    runner = engines.get_engine(engine)
    try:
        cache.ensure(cohort.patients, spec, kinds=wanted, engine=runner)
    finally:
        runner.close()
    for issue in cache.issues:
        err_console.print(f"[yellow]left out of its bag[/]: {show(issue.file or '')}: "
                          f"{show(issue.problem)}",
                          highlight=False, soft_wrap=True)
    run = cache.last_run
    total = time.perf_counter() - start
    console.print(
        f"{spec.label()} ({resolved}, weights {weights}): {run['patients']} patients, "
        f"{run['images']:,} images in {total:.1f} s (cohort read {loaded - start:.1f} s); "
        f"cache hits {run['cached_patients']}/{run['patients']} patients; "
        f"computed {run['computed_images']:,} images at {run['images_per_s']:,.0f} img/s\n"
        f"features in {run['folder']}", highlight=False, soft_wrap=True)


@cache_app.command("info")
@handle_errors
def cache_info(
    cache_dir: Optional[Path] = CACHE_DIR_OPT,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Show the feature cache's size and its entries per feature spec.

    Example: lymphomil cache info
    """
    # deferred for start-up time (see lymphomil.commands.common)
    from lymphomil.flows import caches

    info = caches.info(cache_dir)
    if as_json:
        console.print_json(json.dumps(info, sort_keys=True, default=str))
        return
    table = Table(title=f"feature cache {info['root']} — {_human_bytes(info['bytes'])}, "
                        f"{info['files']} files", title_justify="left")
    for column in ("backbone", "crop", "precision", "weights", "patients", "files", "size"):
        table.add_column(column, justify="left" if column in ("backbone", "weights", "files")
                         else "right")
    for spec in info["specs"]:
        files = ", ".join(f"{k} {v}" for k, v in sorted(spec["files"].items()))
        table.add_row(str(spec["backbone"]), str(spec["crop"]), str(spec["precision"]),
                      spec["weights_digest"], str(spec["patients"]), files,
                      _human_bytes(spec["bytes"]))
    console.print(table)
    cv_files, cv_bytes = info["cv_results"]
    console.print(f"cross-validation results: {cv_files} files, {_human_bytes(cv_bytes)}")


@cache_app.command("clear")
@handle_errors
def cache_clear(
    cache_dir: Optional[Path] = CACHE_DIR_OPT,
    yes: bool = typer.Option(False, "--yes", help="Do not ask for confirmation."),
) -> None:
    """Delete every cached feature file, CV result and reusable run result, the image memo and
    the report's drawn figures (each recomputed when needed).

    Example: lymphomil cache clear --yes
    """
    # deferred for start-up time (see lymphomil.commands.common)
    from lymphomil.flows import caches

    if not yes:
        info = caches.info(cache_dir)
        typer.confirm(f"delete {info['files']} feature files ({_human_bytes(info['bytes'])}) "
                      f"under {show(info['root'])}, the cached CV and run results, the "
                      "image memo and the report's figures?", abort=True)
    cleared = caches.clear_all(cache_dir)
    root = show(cleared.root)
    counts = ", ".join(f"{n} {what}" for what, n in cleared.counts.items())
    console.print(f"freed {_human_bytes(cleared.bytes)} under {root} (features; {counts})",
                  highlight=False)
    if cleared.kept:
        err_console.print(f"[yellow]left alone[/]: {len(cleared.kept)} file(s) under {root} "
                          "that the cache did not write: "
                          + ", ".join(show(p.name) for p in cleared.kept[:5]), highlight=False,
                          soft_wrap=True)
