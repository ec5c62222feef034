"""A data spec read for a PyTorch model, preprocessed exactly as for its ONNX export (the model's input
specs and metadata are handed to :mod:`toolchain.data`, which never imports the model layer)."""

from __future__ import annotations

from toolchain.core.onnxfile import ModelInput
from toolchain.data.dataset import DataOptions, Dataset
from toolchain.data.load import load_for_inputs


def load_dataset_for(spec: str, model, options: DataOptions | None = None) -> Dataset:
    """Load ``spec`` as inputs for a PyTorch model (a :class:`toolchain.models.LoadedModel`), read and
    preprocessed exactly as for its ONNX export."""
    from toolchain.model.forward import data_metadata

    inputs = [ModelInput(s.name, tuple(s.dynamic_axes.get(i, d) for i, d in enumerate(s.shape)), s.dtype)
              for s in model.inputs]
    return load_for_inputs(spec, inputs, data_metadata(model), options or DataOptions())
