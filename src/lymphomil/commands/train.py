"""`lymphomil train`: fit a model on every labelled patient and save its folder."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from lymphomil.commands import common
from lymphomil.commands.app import OnError, app, console, handle_errors, show
from lymphomil.flows.defaults import DEFAULT_MODEL


@app.command()
@handle_errors
def train(
    data: Path = common.DATA_ARG,
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help="model name"),
    out: Path = typer.Option(..., "--out", help="model folder to write"),
    seed: int = typer.Option(0, "--seed", help="seed of the fit"),
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
    from lymphomil import outputs, referral
    from lymphomil.flows import options
    from lymphomil.flows.steps import load_labelled
    from lymphomil.flows.train import train as train_flow
    from lymphomil.runtime.environment import set_threads

    options.check_model_names([model])
    max_referral, target_accuracy = referral.check_target(max_referral, target_accuracy)
    options.check_threads(threads)
    features = options.absolute_weights(options.check_features_option(features))
    ref = options.parse_date(reference_date)
    outputs.check_cache_location(cache_dir, data)
    outputs.claim_output(out, "model", {"data folder": data,
                                        "cache folder": outputs.cache_root(cache_dir)})
    set_threads(threads)
    labelled = load_labelled(data, reference_date=ref, on_error=on_error,
                                   cache_dir=cache_dir)
    skipped = labelled.cohort.skipped_table()
    trained = train_flow(model, labelled, out, reference_date=ref, features=features,
                         seed=seed, cache_dir=cache_dir, max_referral=max_referral,
                         target_accuracy=target_accuracy, extra={"skipped": skipped})
    common.print_skips(skipped)
    console.print(f"trained [bold]{model}[/] on {len(labelled.y)} patients → {show(out)}",
                  highlight=False)
    rule = trained.rule
    console.print(f"referral rule: {escape(rule.describe() if rule else trained.note)}",
                  soft_wrap=True)
