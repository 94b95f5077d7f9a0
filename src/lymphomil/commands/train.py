"""`lymphomil train`: fit a model on every labelled patient and save its folder."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from lymphomil.commands import common
from lymphomil.commands.app import OnError, app, console, handle_errors
from lymphomil.flows import options  # light: checks import what they need when they run
from lymphomil.flows.defaults import DEFAULT_MODEL, RUN_DEFAULTS


@app.command()
@handle_errors
def train(
    data: Path = common.DATA_ARG,
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help="model name"),
    out: Path = typer.Option(..., "--out", help="model folder to write"),
    seed: int = typer.Option(RUN_DEFAULTS["seed"], "--seed", help="seed of the fit"),
    reference_date: str = common.REFERENCE_OPT,
    on_error: OnError = common.ON_ERROR_OPT,
    features: Optional[str] = common.FEATURES_OPT,
    cache_dir: Optional[Path] = common.CACHE_OPT,
    threads: int = common.THREADS_OPT,
    max_referral: Optional[float] = common.MAX_REFERRAL_OPT,
    target_accuracy: Optional[float] = common.TARGET_ACCURACY_OPT,
) -> None:
    """Fit a model on every labelled patient and save it (JSON + safetensors, no pickle),
    with its referral rule (referral.json: which calls to auto-accept, which to refer).

    Example: lymphomil train ../shared/data/dlmi-lymphocytosis --model logreg --out runs/model
    """
    # deferred for start-up time (see lymphomil.commands.common)
    from lymphomil import outputs
    from lymphomil.flows.train import train as train_flow

    ref = options.parse_date(reference_date)
    outputs.check_cache_location(cache_dir, data)
    outputs.claim_output(out, "model", {"data folder": data,
                                        "cache folder": outputs.cache_root(cache_dir)})
    # the flow checks every other option before any work
    trained = train_flow(model, data, out, reference_date=ref, on_error=on_error,
                         features=features, seed=seed, cache_dir=cache_dir, threads=threads,
                         max_referral=max_referral, target_accuracy=target_accuracy)
    common.print_skips(trained.labelled.cohort.skipped_table())
    console.print(f"trained [bold]{model}[/] on {len(trained.labelled.y)} patients → "
                  f"{common.show(out)}", highlight=False)
    console.print(f"referral rule: {escape(trained.referral.describe())}", soft_wrap=True)
