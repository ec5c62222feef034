"""Model sources: catalogue, transformers directories, module:factory, pickles, input specs."""

from __future__ import annotations

import textwrap

import pytest
import torch

from toolchain.core.errors import ToolchainError
from toolchain.model.forward import make_inputs, run_torch
from toolchain.model.load import load_model
from toolchain.model.spec import parse_input_spec

FACTORY = textwrap.dedent("""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(8)
            self.drop = nn.Dropout(0.5)
            self.head = nn.Linear(8, 4)

        def forward(self, x):
            x = torch.relu(self.bn(self.conv(x)))
            return self.head(self.drop(x.mean(dim=(2, 3))))

    def make():
        net = Net()
        net.train()  # left in train mode on purpose: export must still run in eval mode
        return net

    def not_a_module():
        return 42
""")


@pytest.fixture
def factory_file(tmp_path):
    path = tmp_path / "user_net.py"
    path.write_text(FACTORY)
    return path


def test_parse_input_spec_forms():
    assert parse_input_spec("1x3x224x224").shape == (1, 3, 224, 224)
    spec = parse_input_spec("ids:2x128:int64")
    assert (spec.name, spec.shape, spec.dtype, spec.role) == ("ids", (2, 128), "int64", "ids")
    assert parse_input_spec("x:1,3,8,8").name == "x"
    assert parse_input_spec("ids:1x8:int64:30522").high == 30522
    for bad in ("1x0x3", "axb", "x:1x3:complex64", "a:b:c:d:e", "x:1x3:float32:5"):
        with pytest.raises(ToolchainError):
            parse_input_spec(bad)


def test_tiny_catalogue_models_are_labelled_and_run():
    resnet = load_model("tiny-resnet")
    assert resnet.kind == "random-weights" and resnet.inputs[0].dynamic_axes == {0: "batch"}
    out = run_torch(resnet, make_inputs(resnet, batch=3))
    assert out[0].shape == (3, 10)
    bert = load_model("tiny_bert")  # underscores work as well as hyphens
    assert [s.name for s in bert.inputs] == ["input_ids", "attention_mask", "token_type_ids"]
    assert bert.inputs[0].dynamic_axes == {0: "batch", 1: "sequence"}
    feeds = make_inputs(bert, batch=2, seq_len=10)
    assert feeds["attention_mask"][-1, 5:].sum() == 0  # the last row is padded
    assert run_torch(bert, feeds)[0].shape == (2, 10, 64)


def test_random_weight_models_are_deterministic():
    a, b = load_model("tiny-resnet"), load_model("tiny-resnet")
    assert a.source_hash == b.source_hash
    for pa, pb in zip(a.module.parameters(), b.module.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_packaged_pretrained_models():
    cnn = load_model("mnist-cnn")
    assert cnn.kind == "pretrained" and cnn.inputs[0].shape == (1, 1, 28, 28)
    minilm = load_model("minilm")
    assert minilm.kind == "pretrained" and minilm.task == "feature-extraction"
    assert sum(p.numel() for p in minilm.module.parameters()) == pytest.approx(22.7e6, rel=0.01)


def test_efficientnet_lite0_has_its_imagenet_weights():
    import numpy as np
    from PIL import Image

    from toolchain.data.photos import photo_files

    net = load_model("efficientnet-lite0")
    assert net.kind == "pretrained" and net.inputs[0].shape == (1, 3, 224, 224)
    assert sum(p.numel() for p in net.module.parameters()) == pytest.approx(4.65e6, rel=0.02)
    # scikit-image's chelsea.png is a tabby cat: ImageNet classes 281-285 are the domestic cats
    chelsea = [f for f in photo_files() if f.name == "chelsea.png"]
    assert chelsea
    img = Image.open(chelsea[0]).convert("RGB").resize((224, 224))
    mean, std = np.array(net.preprocessing["mean"]), np.array(net.preprocessing["std"])
    x = (np.asarray(img, np.float32) / 255 - mean) / std
    with torch.no_grad():
        logits = net.module(torch.tensor(x.transpose(2, 0, 1)[None], dtype=torch.float32))
    assert 281 <= int(logits.argmax()) <= 285


def test_transformers_directory_with_task(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, num_labels=3)
    BertForSequenceClassification(cfg).save_pretrained(tmp_path / "clf")
    auto = load_model(str(tmp_path / "clf"))
    assert auto.task == "sequence-classification" and auto.output_names == ["logits"]
    assert run_torch(auto, make_inputs(auto, batch=2))[0].shape == (2, 3)
    assert auto.kind == "pretrained"
    feats = load_model(str(tmp_path / "clf"), task="feature-extraction")
    assert feats.output_names == ["last_hidden_state"] and feats.kind == "pretrained"
    from transformers import BertModel

    BertModel(cfg).save_pretrained(tmp_path / "encoder")  # no classifier head in this checkpoint
    headless = load_model(str(tmp_path / "encoder"), task="sequence-classification")
    assert headless.kind == "partly-random" and "classifier" in headless.description
    with pytest.raises(ToolchainError, match="unknown task"):
        load_model(str(tmp_path / "clf"), task="translation")


def test_directory_without_config_is_refused(tmp_path):
    with pytest.raises(ToolchainError, match="config.json"):
        load_model(str(tmp_path))


def test_factory_with_state_dict(factory_file, tmp_path):
    plain = load_model(f"{factory_file}:make", input_shapes=["1x3x16x16"])
    assert plain.kind == "user" and not plain.module.training
    weights = tmp_path / "w.pt"
    torch.save({k: torch.full_like(v, 0.5) if v.is_floating_point() else v
                for k, v in plain.module.state_dict().items()}, weights)
    loaded = load_model(f"{factory_file}:make", weights=str(weights), input_shapes=["1x3x16x16"])
    assert torch.all(loaded.module.conv.weight == 0.5)
    assert loaded.source_hash != plain.source_hash


def test_factory_errors(factory_file, tmp_path):
    with pytest.raises(ToolchainError, match="input shape"):
        load_model(f"{factory_file}:make")
    with pytest.raises(ToolchainError, match="not a torch.nn.Module"):
        load_model(f"{factory_file}:not_a_module", input_shapes=["1x3x8x8"])
    with pytest.raises(ToolchainError, match="no callable"):
        load_model(f"{factory_file}:missing", input_shapes=["1x3x8x8"])
    with pytest.raises(ToolchainError, match="cannot import module"):
        load_model("no_such_pkg.nets:make", input_shapes=["1x3x8x8"])
    wrong = tmp_path / "wrong.pt"
    torch.save({"conv.weight": torch.zeros(1)}, wrong)
    with pytest.raises(ToolchainError, match="does not fit"):
        load_model(f"{factory_file}:make", weights=str(wrong), input_shapes=["1x3x8x8"])


class Pickled(torch.nn.Module):
    def forward(self, x):
        return x * 2


def test_untrusted_pickles_are_refused_by_default(factory_file, tmp_path):
    whole = tmp_path / "whole.pt"
    torch.save(Pickled(), whole)
    with pytest.raises(ToolchainError, match="refusing to unpickle"):
        load_model(str(whole), input_shapes=["1x4"])
    model = load_model(str(whole), input_shapes=["1x4"], allow_pickle=True)
    assert run_torch(model, {"input": torch.ones(1, 4)})[0].tolist() == [[2.0] * 4]
    # a "weights" file that is really a pickled object is refused under weights_only=True
    with pytest.raises(ToolchainError, match="refusing to unpickle"):
        load_model(f"{factory_file}:make", weights=str(whole), input_shapes=["1x3x8x8"])


def test_input_shape_override_checks_rank():
    with pytest.raises(ToolchainError, match="dimensions"):
        load_model("tiny-resnet", input_shapes=["pixel_values:1x3x64"])
    model = load_model("tiny-resnet", input_shapes=["pixel_values:1x3x32x32"])
    assert model.inputs[0].shape == (1, 3, 32, 32)
