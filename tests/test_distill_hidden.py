"""Distillation from logits and hidden states: a transformer student pruned by `toolchain prune` (heads and MLP
width cut, hidden size and depth kept) also matches its teacher's hidden states of every layer, by default,
as the report says; 0 turns it off; it brings the hidden states closer than the output loss alone; a CNN
pair is left as it was. tiny-bert (random weights): seconds each."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from click.testing import CliRunner

from toolchain.cli import main
from toolchain.core.errors import ToolchainError


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pruned(tmp_path_factory) -> str:
    """tiny-bert with half its heads and MLP width cut (no fine-tuning), as tests/test_prune.py builds it."""
    out = tmp_path_factory.mktemp("prune") / "bert"
    r = CliRunner().invoke(main, ["prune", "tiny-bert", "--importance", "l2", "--ratio", "0.5", "--eval", "random",
                                  "--samples", "40", "--epochs", "0", "--max-accuracy-drop", "100", "-o", str(out),
                                  "--json"])
    assert r.exit_code == 0, r.output
    return str(out)


def _config(student: str, **kw):
    from toolchain.distill import DistillConfig

    base = {"teacher": "tiny-bert", "student": student, "data": "random", "samples": 24, "seq_len": 8, "epochs": 1,
            "batch_size": 8}
    return DistillConfig(**{**base, **kw})


def _epochs(report: dict) -> list[dict]:
    return [{k: v for k, v in e.items() if k != "seconds"} for e in report["epochs"]]


def test_hidden_states_are_matched_by_default_and_reported(pruned, tmp_path):
    from toolchain.distill import run_distill

    report = run_distill(_config(pruned), tmp_path / "on")
    assert report["objective"] == "cosine"  # feature extraction: the pooled-embedding loss, as before
    assert report["hidden_states"] == {"weight": 1.0, "default_weight": 1.0, "loss": "mse", "layers": 2,
                                       "why": "transformer teacher and student, hidden size 64, 2 layers"}
    assert report["loss"] == "output cosine + hidden-state MSE x 1 over 2 layers"
    assert report["config"]["hidden_weight"] == 1.0  # resolved, so --resume continues the same job
    written = json.loads((tmp_path / "on" / "distill.json").read_text())
    assert written["loss"] == report["loss"] and written["hidden_states"] == report["hidden_states"]

    off = run_distill(_config(pruned, hidden_weight=0), tmp_path / "off")
    assert off["loss"] == "output cosine" and off["hidden_states"]["layers"] == 0
    assert off["hidden_states"]["weight"] == 0.0 and off["hidden_states"]["why"].startswith("off: weight 0")
    assert _epochs(off) != _epochs(report)  # the term changed the training


def test_cli_options_and_resume_keep_the_hidden_term(pruned, tmp_path):
    from toolchain.distill import recorded_config, run_distill

    args = ["distill", "--teacher", "tiny-bert", "--student", pruned, "--data", "random", "--samples", "24",
            "--seq-len", "8", "--epochs", "2", "--batch-size", "8", "--hidden-loss", "cosine", "--hidden-weight", "0.5"]
    full = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "full"), "--json"])
    assert full.exit_code == 0, full.output
    full_report = json.loads(full.stdout)
    assert full_report["loss"] == "output cosine + hidden-state cosine x 0.5 over 2 layers"

    class Stop(Exception):
        pass

    def stop(epoch, metrics):
        raise Stop

    with pytest.raises(Stop):
        run_distill(_config(pruned, epochs=2, hidden_loss="cosine", hidden_weight=0.5), tmp_path / "cut", on_epoch=stop)
    assert recorded_config(tmp_path / "cut").hidden_weight == 0.5
    resumed = CliRunner().invoke(main, ["distill", "-o", str(tmp_path / "cut"), "--resume", "--json"])
    assert resumed.exit_code == 0, resumed.output
    assert _epochs(json.loads(resumed.stdout)) == _epochs(full_report)  # the teacher's states are the same each run


def test_a_checkpoint_from_before_the_hidden_term_resumes_without_it(pruned, tmp_path):
    from toolchain.distill import recorded_config, run_distill

    run_distill(_config(pruned), tmp_path / "old")  # then its checkpoint as written before the term existed
    path = tmp_path / "old" / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    del state["config"]["hidden_weight"], state["config"]["hidden_loss"]
    torch.save(state, path)
    assert recorded_config(tmp_path / "old").hidden_weight == 0.0
    report = run_distill(_config(pruned), tmp_path / "old", resume=True)  # finished: reported as it trained
    assert report["hidden_states"]["weight"] == 0.0 and report["loss"] == "output cosine"


def test_the_hidden_term_brings_the_hidden_states_closer(pruned):
    from toolchain.data.dataset import DataOptions
    from toolchain.losses import hidden_state_loss
    from toolchain.model.data import load_dataset_for
    from toolchain.model.load import load_model
    from toolchain.training import hidden_states, to_torch, train

    teacher, start = load_model("tiny-bert"), load_model(pruned)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # further from the teacher than the cut alone leaves it
        for p in start.module.parameters():
            p.add_(0.5 * p.std().nan_to_num(0.02) * torch.randn(p.shape, generator=gen))
    data = load_dataset_for("random", teacher, DataOptions(samples=64, seq_len=16))
    feeds = to_torch(next(load_dataset_for("random", teacher, DataOptions(samples=32, seq_len=16, seed=1)).batches(32)))

    def distance(student) -> float:
        with torch.no_grad():
            _, hidden, mask = hidden_states(student, student.module, feeds, 2)
            _, target, _ = hidden_states(teacher, teacher.module, feeds, 2)
            return hidden_state_loss(hidden, target, mask).item()

    after = {}
    for weight in (0.0, 1.0):
        student = copy.copy(start)
        student.module = copy.deepcopy(start.module)
        train(student, student.module, data, epochs=3, lr=2e-3, batch_size=16, teacher=teacher.module,
              teacher_loaded=teacher, hidden_weight=weight)
        after[weight] = distance(student)
    before = distance(start)
    assert after[1.0] < 0.75 * after[0.0] and after[1.0] < 0.6 * before, (before, after)


def test_a_cnn_pair_is_unaffected(tmp_path):
    from toolchain.distill import run_distill
    from toolchain.losses import hidden_match
    from toolchain.model.load import load_model

    cnn = {"teacher": "mnist-cnn", "student": "mnist-cnn", "samples": 40, "batch_size": 16}
    report = run_distill(_config(**cnn), tmp_path / "cnn")
    assert report["objective"] == "kl" and report["loss"] == "logits KD T=4 (no labels)"
    assert report["hidden_states"] == {"weight": 0.0, "default_weight": 0.0, "loss": "mse", "layers": 0,
                                       "why": "off: the teacher (mnist-cnn) is not a transformer"}
    same = run_distill(_config(**cnn, hidden_weight=0), tmp_path / "zero")
    assert _epochs(same) == _epochs(report)
    with pytest.raises(ToolchainError, match="needs a transformer teacher and student.*not a transformer"):
        run_distill(_config(**cnn, hidden_weight=1.0), tmp_path / "one")
    assert not (tmp_path / "one").exists()
    # transformers of another depth are no pair either
    bert = load_model("tiny-bert")
    deeper = copy.copy(bert)
    deeper.module = copy.deepcopy(bert.module)
    deeper.module.config.num_hidden_layers = 3
    assert hidden_match(bert, bert.module, deeper, deeper.module) == (0, "the layer counts differ (teacher 2, student 3)")


def test_help_states_the_defaults_by_family():
    r = CliRunner().invoke(main, ["distill", "--help"])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "5e-5 for a transformer (a transformers model whose config has attention heads" in text
    assert "1e-3 for any other model" in text
    assert "--hidden-weight" in text and "Default by the pair: 1.0 when teacher and student are transformers" in text
    assert "else 0 (off" in text
