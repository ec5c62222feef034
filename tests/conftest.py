"""Shared fixtures: small real models exported once per test session."""

from __future__ import annotations

import os
import warnings

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")


def _export(tmp_path_factory, source: str, exporter: str = "dynamo", **kwargs):
    from toolchain.export.exporter import ExportOptions, export_model
    from toolchain.model.load import load_model

    loaded = load_model(source)
    out = tmp_path_factory.mktemp(f"{source}-{exporter}") / f"{source}.onnx"
    result = export_model(loaded, out, ExportOptions(exporter=exporter, **kwargs))
    return loaded, result


@pytest.fixture(scope="session", params=["dynamo", "torchscript"])
def tiny_resnet(request, tmp_path_factory):
    return _export(tmp_path_factory, "tiny-resnet", request.param)


@pytest.fixture(scope="session", params=["dynamo", "torchscript"])
def tiny_bert(request, tmp_path_factory):
    return _export(tmp_path_factory, "tiny-bert", request.param)


@pytest.fixture(scope="session")
def minilm(tmp_path_factory):
    return _export(tmp_path_factory, "minilm", "dynamo")


@pytest.fixture(scope="session")
def mnist_cnn(tmp_path_factory):
    return _export(tmp_path_factory, "mnist-cnn", "dynamo")
