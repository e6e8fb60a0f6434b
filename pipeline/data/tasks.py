"""Evaluation data beyond the main validation split: named validation sets and multiple-choice tasks.

Named validation sets (`eval.val_sets=["docs=stdlib:idlelib/*.txt", "mine=/data/legal/*.txt"]`):
text files tokenized with the corpus's own tokenizer, documents joined as `doc EOS doc EOS ...`, cut
at `eval.val_set_tokens`. `stdlib:<glob>` is a glob under the running Python's standard library
(the offline demo's second domain: IDLE's English change notes, which the `.py`-only stdlib corpus
never trains on). Any other source is a path, directory or glob of .txt/.md/.py files; it must not
overlap the training data (that is the user's to ensure: we cannot tell).

Multiple-choice tasks (`eval.tasks=[my_task.jsonl, corpus_next_line]`), one JSON object per line:

    {"question": "The capital of France is", "choices": [" Paris", " Rome", " Oslo"], "answer": 0}

`answer` is the 0-based index of the correct choice (or its exact text). The model scores each choice
as the continuation of the question exactly as written -- put any separator (" ", "\\n") in the text
-- by its summed log-likelihood (ranked classification, as OLMES / the OLMo ladder; Gu et al. 2024).
An optional "id" is kept. A malformed line aborts with its line number.

`corpus_next_line` is a task built from the prepared corpus's *validation* documents (held out from
training at the document level): the context is up to a few lines of a held-out document, the
correct choice its next line, the three distractors that line with two of its words swapped. Chance is
25%; a model that has learnt the domain's word order beats it, so small pilots show a rising
accuracy curve on any corpus.
"""

from __future__ import annotations

import glob
import json
import math
import re
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.data.manifest import Manifest, load_tokenizer, open_tokens
from pipeline.errors import UserError

CORPUS_TASK = "corpus_next_line"
TEXT_SUFFIXES = (".txt", ".md", ".py", ".text")
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")
# corpus_next_line: lines worth asking about (long enough to carry information, short enough to fit the
# demo's 128-token window together with their context), the context kept before them, the choices.
NEXT_LINE_CHARS = (12, 90)
NEXT_LINE_CONTEXT_LINES = 6
NEXT_LINE_CHOICES = 4
NEXT_LINE_MIN_WORDS = 4   # 6 pairs to swap: three distinct distractors almost always exist


@dataclass(frozen=True)
class Question:
    question: str
    choices: tuple[str, ...]
    answer: int


@dataclass(frozen=True)
class Task:
    name: str
    questions: tuple[Question, ...]
    source: str

    @property
    def chance(self) -> float:
        """Expected accuracy of a uniform random guess (the floor of the accuracy sigmoid)."""
        return float(np.mean([1.0 / len(q.choices) for q in self.questions]))

    def describe(self) -> dict:
        return {"source": self.source, "n_questions": len(self.questions), "chance": self.chance}


# --- parsing the documented JSONL format ----------------------------------------------------------
def parse_question(row, where: str) -> Question:
    """One line of a task file; a one-line UserError naming `where` (file and line) when malformed."""
    if not isinstance(row, dict):
        raise UserError(f"{where} is not a JSON object: write {{\"question\": ..., \"choices\": [...], \"answer\": i}}")
    missing = [k for k in ("question", "choices", "answer") if k not in row]
    if missing:
        raise UserError(f"{where} has no '{missing[0]}': every line needs question, choices and answer")
    question, choices, answer = row["question"], row["choices"], row["answer"]
    if not isinstance(question, str):
        raise UserError(f"{where}: question must be a string, got {type(question).__name__}")
    if (not isinstance(choices, list) or len(choices) < 2
            or not all(isinstance(c, str) and c for c in choices)):
        raise UserError(f"{where}: choices must be a list of at least 2 non-empty strings")
    if isinstance(answer, str):
        if answer not in choices:
            raise UserError(f"{where}: answer {answer!r} is not one of the choices: give its 0-based index")
        answer = choices.index(answer)
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
        raise UserError(f"{where}: answer={row['answer']!r} must be a 0-based index below {len(choices)}")
    return Question(question, tuple(choices), answer)


def load_task_file(path: str | Path, max_questions: int | None = None) -> Task:
    """A task from a JSONL file (format in the module doc); the first `max_questions` lines if given."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"task file {path} does not exist: give a .jsonl file or {CORPUS_TASK}")
    questions = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"task file {path} line {line_no} is not valid JSON ({err.msg}): fix or remove it") from err
        questions.append(parse_question(row, f"task file {path} line {line_no}"))
        if max_questions and len(questions) >= max_questions:
            break
    if not questions:
        raise UserError(f"task file {path} has no questions: write one JSON object per line")
    return Task(task_name(str(path)), tuple(questions), str(path))


def task_name(spec: str) -> str:
    """The metric prefix of a task: its file stem, lower-cased, non-alphanumerics as '_'."""
    if spec == CORPUS_TASK:
        return CORPUS_TASK
    name = re.sub(r"[^a-z0-9]+", "_", Path(spec).stem.lower()).strip("_")
    return name if name and name[0].isalpha() else f"task_{name}"


# --- the task built from the corpus --------------------------------------------------------------
def validation_documents(manifest: Manifest) -> list[str]:
    """The prepared corpus's validation documents as text (decoded from val.bin, split at EOS).

    The last document may be cut short by data.val_tokens; it is dropped.
    """
    tokens = np.asarray(open_tokens(manifest, "val"), dtype=np.int64)
    ends = np.flatnonzero(tokens == manifest.eos_id)
    tokenizer = load_tokenizer(manifest)
    docs, start = [], 0
    for end in ends:
        if end > start:
            docs.append(tokenizer.decode(tokens[start:end].tolist()))
        start = end + 1
    return docs


def _candidate_lines(doc: str) -> list[tuple[int, str]]:
    lo, hi = NEXT_LINE_CHARS
    lines = doc.split("\n")
    return [(i, line) for i, line in enumerate(lines)
            if i >= 2 and lo <= len(line.strip()) and len(line) <= hi and len(line.split()) >= NEXT_LINE_MIN_WORDS]


def _swapped(line: str, rng: np.random.Generator, taken: set[str]) -> str | None:
    """The line with two of its words swapped (indentation kept), not in `taken`; None if none found."""
    indent = line[:len(line) - len(line.lstrip())]
    words = line.split()
    for _ in range(20):
        i, j = rng.choice(len(words), size=2, replace=False)
        order = list(range(len(words)))
        order[i], order[j] = order[j], order[i]
        candidate = indent + " ".join(words[k] for k in order)
        if candidate not in taken:
            return candidate
    return None


def next_line_task(docs: list[str], n_questions: int, seed: int = 0) -> Task:
    """`corpus_next_line` from held-out documents (see the module doc); deterministic in `seed`.

    The distractors are the true line with two of its words swapped: the same tokens in another
    order, so a model that knows only which tokens are frequent is at chance, and accuracy measures
    what it learnt of the order (minimal pairs, as BLiMP, Warstadt et al. 2020). Whole-line shuffles
    were too easy: a 100k-parameter pilot scored 81% after 400k tokens.
    """
    rng = np.random.default_rng(seed)
    pool = [(d, i, line) for d, doc in enumerate(docs) for i, line in _candidate_lines(doc)]
    if len(pool) < n_questions:
        raise UserError(f"{CORPUS_TASK}: the validation split has only {len(pool)} usable lines: raise "
                        f"data.val_tokens or lower eval.max_questions")
    questions = []
    for k in rng.permutation(len(pool)):
        d, i, answer_line = pool[k]
        taken = {answer_line, " ".join(answer_line.split())}
        distractors = []
        while len(distractors) < NEXT_LINE_CHOICES - 1:
            candidate = _swapped(answer_line, rng, taken)
            if candidate is None:
                break
            taken.add(candidate)
            distractors.append(candidate)
        if len(distractors) < NEXT_LINE_CHOICES - 1:
            continue
        lines = docs[d].split("\n")
        context = "\n".join(lines[max(0, i - NEXT_LINE_CONTEXT_LINES):i]) + "\n"
        position = int(rng.integers(NEXT_LINE_CHOICES))
        choices = distractors[:position] + [answer_line] + distractors[position:]
        questions.append(Question(context, tuple(choices), position))
        if len(questions) == n_questions:
            break
    if len(questions) < n_questions:
        raise UserError(f"{CORPUS_TASK}: only {len(questions)} usable lines in the validation split: raise "
                        f"data.val_tokens or lower eval.max_questions")
    return Task(CORPUS_TASK, tuple(questions), f"built from the corpus's validation documents (seed {seed})")


def load_tasks(specs: list[str], manifest: Manifest, max_questions: int, seed: int = 0) -> list[Task]:
    """Every task `eval.tasks` names: JSONL files, or `corpus_next_line` built from `manifest`."""
    tasks = []
    for spec in specs:
        if spec == CORPUS_TASK:
            tasks.append(next_line_task(validation_documents(manifest), max_questions, seed))
        else:
            tasks.append(load_task_file(spec, max_questions))
    names = [t.name for t in tasks]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise UserError(f"eval.tasks has two tasks named {duplicate}: rename one of the files")
    return tasks


# --- named validation sets ------------------------------------------------------------------------
def parse_val_set(spec: str) -> tuple[str, str]:
    """'name=source' -> (name, source); a one-line UserError naming the entry otherwise."""
    name, sep, source = spec.partition("=")
    name = name.strip()
    if not sep or not source.strip():
        raise UserError(f"eval.val_sets entry {spec!r} must be name=source, e.g. docs=stdlib:idlelib/*.txt")
    if not NAME_PATTERN.match(name) or name == "val":
        raise UserError(f"eval.val_sets name {name!r} must be lower-case letters, digits and _, and not 'val' "
                        "(the main validation set)")
    return name, source.strip()


def val_set_files(source: str) -> list[Path]:
    if source.startswith("stdlib:"):
        root = Path(sysconfig.get_paths()["stdlib"])
        files = sorted(Path(p) for p in glob.glob(str(root / source[len("stdlib:"):]), recursive=True))
    else:
        path = Path(source).expanduser()
        files = (sorted(p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES) if path.is_dir()
                 else [path] if path.is_file() else sorted(Path(p) for p in glob.glob(str(path), recursive=True)))
    files = [f for f in files if f.is_file()]
    if not files:
        raise UserError(f"eval.val_sets source {source}: no such files: give a path, directory or glob "
                        "(or stdlib:<glob>)")
    wrong = [f for f in files if f.suffix.lower() not in TEXT_SUFFIXES]
    if wrong:
        raise UserError(f"eval.val_sets source {source} holds {wrong[0].name}: only text files "
                        f"({', '.join(TEXT_SUFFIXES)}) can be a validation set")
    return files


def val_set_tokens(source: str, manifest: Manifest, max_tokens: int, min_tokens: int) -> np.ndarray:
    """The validation set's first `max_tokens` tokens (`doc EOS doc EOS ...`), with the corpus's tokenizer."""
    tokenizer = load_tokenizer(manifest)
    ids: list[int] = []
    for path in val_set_files(source):
        ids += tokenizer.encode(path.read_text(encoding="utf-8", errors="replace"), add_special_tokens=False)
        ids.append(manifest.eos_id)
        if len(ids) >= max_tokens:
            break
    if len(ids) < min_tokens:
        raise UserError(f"eval.val_sets source {source} holds only {len(ids)} tokens, fewer than "
                        f"{min_tokens}: add text or point it elsewhere")
    return np.asarray(ids[:max_tokens], dtype=np.int64)


def bytes_of(text: str) -> int:
    return len(text.encode("utf-8"))


def bits_per_byte(nats: float, n_bytes: int) -> float:
    """Negative log-likelihood in nats over `n_bytes` UTF-8 bytes -> bits per byte."""
    return nats / (math.log(2) * n_bytes)
