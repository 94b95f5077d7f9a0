"""`lymphomil features` and `lymphomil cache info|clear` end to end on the synthetic cohort."""

from __future__ import annotations

import json
import sys
import urllib.error
from pathlib import Path

import torch
from typer.testing import CliRunner

import lymphomil.commands.features  # noqa: F401  registers the commands
from lymphomil.commands.app import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_features_then_cache_info_and_clear(synthetic_root: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    args = ("features", synthetic_root, "--backbone", "small-cnn", "--weights", "none",
            "--crop", "64", "--precision", "fp32", "--cache-dir", cache)
    first = invoke(*args, "--kinds", "pooled,map")
    assert first.exit_code == 0, first.output
    assert "cache hits 0/24 patients" in first.stdout and "img/s" in first.stdout
    second = invoke(*args)
    assert second.exit_code == 0, second.output
    assert "cache hits 24/24 patients" in second.stdout

    info = invoke("cache", "info", "--cache-dir", cache, "--json")
    payload = json.loads(info.stdout)
    assert payload["specs"][0]["files"] == {"pooled": 24, "map": 24}
    table = invoke("cache", "info", "--cache-dir", cache)
    assert "small-cnn" in table.stdout

    cleared = invoke("cache", "clear", "--cache-dir", cache, "--yes")
    assert cleared.exit_code == 0 and "freed" in cleared.stdout
    assert json.loads(invoke("cache", "info", "--cache-dir", cache, "--json").stdout)["files"] == 0


def test_features_errors_are_clear(synthetic_root: Path, tmp_path: Path, monkeypatch) -> None:
    result = invoke("features", synthetic_root, "--backbone", "resnet9", "--cache-dir", tmp_path)
    assert result.exit_code == 2 and "unknown backbone 'resnet9'" in result.output
    result = invoke("features", synthetic_root, "--kinds", "logits", "--cache-dir", tmp_path)
    assert result.exit_code == 2 and "unknown feature kind" in result.output


def test_a_torchvision_backbone_without_its_extra(synthetic_root: Path, tmp_path: Path,
                                                  monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)  # as if not installed
    result = invoke("features", synthetic_root, "--backbone", "mobilenet-v2", "--cache-dir",
                    tmp_path)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and 'pip install "lymphomil[torchvision]"' in lines[0], result.output


def test_imagenet_download_without_network(synthetic_root: Path, tmp_path: Path,
                                           monkeypatch) -> None:
    from tests.features.test_backbones import torchvision_or_skip

    torchvision_or_skip()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    result = invoke("features", synthetic_root, "--backbone", "resnet18", "--cache-dir", tmp_path)
    assert result.exit_code == 2
    assert "cannot download the ImageNet weights" in result.output
    assert "Traceback" not in result.output


def test_list_backbones() -> None:
    result = invoke("features", "--list")
    assert result.exit_code == 0 and "efficientnet-lite0" in result.stdout
    result = invoke("features")
    assert result.exit_code == 2 and "no data folder given" in result.output
