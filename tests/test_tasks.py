"""Downstream tasks and named validation sets recorded by pilots (pipeline/data/tasks.py,
pipeline/train/evaluate.py), and the bad-input lines of the fit's new keys (issue 16)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.config.load import load_config
from pipeline.config.schema import Study
from pipeline.data.corpus import prepare_corpus
from pipeline.data.tasks import (
    CORPUS_TASK,
    Question,
    Task,
    load_task_file,
    next_line_task,
    validation_documents,
)
from pipeline.errors import UserError
from pipeline.train.evaluate import _encode_task, _score_task, build_suite

REPO = Path(__file__).resolve().parents[1]


class UniformLM(torch.nn.Module):
    """A language model that gives every token of a V-token vocabulary probability 1/V."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab

    def forward(self, x):
        return torch.zeros(*x.shape, self.vocab)


def test_task_file_format_and_a_malformed_line(tmp_path):
    good = tmp_path / "qa.jsonl"
    good.write_text(json.dumps({"question": "2+2=", "choices": ["4", "5"], "answer": 0}) + "\n"
                    + json.dumps({"question": "Sky:", "choices": [" blue", " red", " green"], "answer": " blue"}) + "\n")
    task = load_task_file(good)
    assert task.name == "qa" and [q.answer for q in task.questions] == [0, 0]
    assert task.chance == pytest.approx((1 / 2 + 1 / 3) / 2)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "a", "choices": ["x", "y"], "answer": 0}) + "\n"
                   + json.dumps({"question": "b", "choices": ["x"], "answer": 0}) + "\n")
    with pytest.raises(UserError, match=r"bad.jsonl line 2: choices must be a list of at least 2") as err:
        load_task_file(bad)
    assert "\n" not in str(err.value)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "a", "choices": ["x", "y"], "answer": 0}\n{"question": \n')
    with pytest.raises(UserError, match="line 2 is not valid JSON"):
        load_task_file(broken)


def test_scores_of_a_uniform_model_are_the_known_numbers():
    """Under p = 1/V per token, log p(choice) = -len(tokens) ln V: bpb = tokens x log2 V / bytes."""
    class ByteTokenizer:
        eos_token_id = 0

        def encode(self, text, add_special_tokens=False):
            return list(text.encode())

    task = Task("t", (Question("ab", ("xyz", "q"), 0), Question("cd", ("uv", "wxyz"), 1)), "test")
    scored = _encode_task(task, ByteTokenizer(), seq_len=16)
    metrics = _score_task(UniformLM(256), scored, torch.device("cpu"), lambda: torch.autocast("cpu", enabled=False))
    assert metrics["t_bpb"] == pytest.approx(8.0)           # one byte per token, log2 256 = 8 bits each
    # Summed log-likelihood prefers the shorter choice; both answers are the longer one: 0 of 2.
    assert metrics["t_acc"] == 0.0
    # Per-character normalisation makes every choice tie at -ln V per char; argmax takes the first: q1 right.
    assert metrics["t_acc_norm"] == 0.5


def test_corpus_task_and_named_set_on_the_prepared_corpus(corpus_overrides, tmp_path):
    study = load_config("study", Study, [*corpus_overrides, "eval.val_sets=['notes=stdlib:idlelib/*.txt']",
                                         f"eval.tasks=[{CORPUS_TASK}]", "eval.max_questions=40"])
    manifest = prepare_corpus(study.data)
    docs = validation_documents(manifest)
    task = next_line_task(docs, 40, seed=0)
    assert len(task.questions) == 40 and task.chance == 0.25
    for q in task.questions:
        right = q.choices[q.answer]
        assert right.split("\n")[0] == right and any(right in d for d in docs)   # a real held-out line
        assert all(sorted(c.split()) == sorted(right.split()) and c != right
                   for i, c in enumerate(q.choices) if i != q.answer)            # same words, other order
    suite = build_suite(study.eval, manifest, seq_len=64)
    metrics = suite.evaluate(UniformLM(manifest.vocab_size), torch.device("cpu"),
                             lambda: torch.autocast("cpu", enabled=False))
    assert set(metrics) == {"notes_loss", f"{CORPUS_TASK}_bpb", f"{CORPUS_TASK}_acc", f"{CORPUS_TASK}_acc_norm"}
    assert metrics["notes_loss"] == pytest.approx(math.log(manifest.vocab_size))
    assert suite.describe()["tasks"][CORPUS_TASK]["chance"] == 0.25


def run_fit(args: list[str], tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.fit", *args, f"out_dir={tmp_path / 'out'}"], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.mark.parametrize("args, fragment", [
    (["target=nope"], "unknown target 'nope'"),
    (["target=hs:acc", "predict.params=[1e9]"], "give them in pairs"),
    (["columns.params=size"], "columns.params=size"),
    (["eval.val_sets=[novalue]"], "must be name=source"),
])
def test_fit_bad_input_one_line_exit_2(args, fragment, tmp_path):
    runs = tmp_path / "runs.csv"
    runs.write_text("params,tokens,loss,hs_bpb,hs_acc\n" + "".join(
        f"{n},{20 * n},{2 + 1e3 / n ** 0.3},{1 - i / 20},{0.3 + i / 50}\n" for i, n in enumerate([1e8, 2e8, 4e8, 8e8, 1.6e9])))
    proc = run_fit([f"runs={runs}", "bootstrap=0", *args], tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()


def test_eval_section_is_checked_at_load():
    with pytest.raises(UserError, match="eval.val_sets entry"):
        load_config("study", Study, ["eval.val_sets=['val=x.txt']"])
