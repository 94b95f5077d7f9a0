"""A two-node Ray cluster simulated on one machine (ray.cluster_utils.Cluster): the work
spreads over both nodes and the answers are the local engine's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lymphomil.data.cohort import load_cohort

from .conftest import MODELS, PLAN, SPEC_TEXT, cache_digests, require_ray

ray = require_ray()


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_two_nodes_share_the_work_and_give_the_local_answers(cluster, synthetic_root: Path,
                                                             tmp_path: Path,
                                                             local_reference: dict) -> None:
    """The local answers are the session's local reference (tests/runtime/conftest.py): the same
    cohort, features, models and plan."""
    from lymphomil.data.cohort import labelled_patients
    from lymphomil.flows.caches import attach_features
    from lymphomil.flows.cv import run_cv
    from lymphomil.flows.patients import configure_model
    from lymphomil.runtime.ray_engine import RayEngine

    engine = RayEngine(address=cluster.address, chunk_images=24)
    assert engine.describe() == "ray: 2 node(s), 2 CPUs"
    cohort = load_cohort(synthetic_root)
    model = [configure_model("image-logreg", SPEC_TEXT)]
    attach_features(cohort.patients, model, tmp_path / "ray", engine=engine)
    assert len(engine.last_nodes) == 2, "every chunk ran on one node"
    assert cache_digests(tmp_path / "ray") == local_reference["digests"]

    labelled = labelled_patients(cohort)
    on_ray = run_cv(MODELS, labelled.patients, labelled.y, **PLAN, features=SPEC_TEXT,
                    cache_dir=tmp_path / "ray", engine=engine)
    for got, want in zip(on_ray, local_reference["results"], strict=True):
        np.testing.assert_array_equal(got.proba, want.proba)
