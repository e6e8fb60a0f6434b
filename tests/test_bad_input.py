"""Bad input at every entry point: exit 2, one stderr line "error: ..." naming the problem, no traceback.

Each case runs the real command (`python -m pipeline.train|sweep|fit`) as a subprocess and must fail
before any training: nothing is written under the results directory. `--debug` shows the traceback.
A static scan checks that nothing read from a results file, a checkpoint or a config is executed as
code (no pickle, eval/exec, unsafe torch.load or yaml.load, hydra instantiate, shell=True).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

from pipeline.errors import UserError

REPO = Path(__file__).resolve().parents[1]

# Synthetic runs from Besiroglu et al. 2024's law; only their shape matters here.
GOOD_CSV = "params,tokens,loss\n" + "".join(f"{n:g},{20 * n:g},{1.82 + 482 / n**0.348 + 2085 / (20 * n)**0.366:.4f}\n"
                                             for n in (1e6, 2e6, 4e6, 8e6, 1.6e7))
ONE_BUDGET_CSV = "params,flops,loss\n" + "".join(f"{n:g},1e18,{3.0 + i / 100}\n"
                                                  for i, n in enumerate((1e6, 2e6, 4e6, 8e6)))
FILES = {
    "good.csv": GOOD_CSV,
    "empty.csv": "",
    "no_loss.csv": "params,tokens\n1e6,2e7\n2e6,4e7\n",
    "nan_loss.csv": "params,tokens,loss\n1e6,2e7,nan\n2e6,4e7,3.1\n",
    "text_value.csv": "params,tokens,loss\n1e6,2e7,3.2\n2e6,many,3.1\n",
    "one_budget.csv": ONE_BUDGET_CSV,
    "future/s/runs/r1/run.json": json.dumps({"schema_version": 99, "run_id": "r1", "status": "ok"}),
}

# (case id, entry point, arguments ({dir} = the input files), fragment the one error line must name)
CASES = [
    ("unknown preset", "train", ["experiment=no_such_preset"], "unknown preset experiment=no_such_preset"),
    ("misspelled key", "train", ["model.sizee=1e5"], "unknown key model.sizee"),
    ("added unknown key", "train", ["+model.dropuot=0.1"], "model.dropuot: Key 'dropuot' not in 'ModelConfig'"),
    ("wrong type", "train", ["train.lr=fast"], "train.lr: Value 'fast' of type 'str' could not be converted"),
    ("negative size", "train", ["model.size=-5"], "cannot read model size '-5'"),
    ("negative budget", "fit", ["runs={dir}/good.csv", "budget.flops=-1"], "budget.flops=-1.0 must be a positive"),
    ("empty csv", "fit", ["runs={dir}/empty.csv", "budget.flops=1e20"], "empty.csv has no rows"),
    ("csv without loss", "fit", ["runs={dir}/no_loss.csv", "budget.flops=1e20"], "missing column 'loss'"),
    ("csv with NaN loss", "fit", ["runs={dir}/nan_loss.csv", "budget.flops=1e20"], "line 2: loss is NaN"),
    ("csv with text", "fit", ["runs={dir}/text_value.csv", "budget.flops=1e20"],
     "line 3: tokens='many' is not a number"),
    ("wrong schema_version", "fit", ["runs={dir}/future/s", "budget.flops=1e20"],
     "schema_version=99, this tool reads version 1"),
    ("missing runs path", "fit", ["runs={dir}/no_such_dir", "budget.flops=1e20"], "no_such_dir does not exist"),
    ("one budget", "fit", ["runs={dir}/one_budget.csv", "budget.flops=1e20"],
     "Approach 2 needs runs at 2 or more budgets"),
    ("duplicate size", "sweep", ["sweep.sizes=[23k,23k]", "sweep.budgets_flops=[1e11]"], "sweep.sizes lists 23k twice"),
    ("pilot share above 1", "sweep", ["sweep.pilot_share=1.5", "budget.flops=1e15"],
     "sweep.pilot_share=1.5 must be in (0, 1]"),
    ("zero gpus", "fit", ["runs={dir}/good.csv", "budget.gpu=h100_sxm", "budget.gpus=0", "budget.days=14"],
     "budget.gpus=0 must be a positive whole number"),
    ("unknown gpu", "fit", ["runs={dir}/good.csv", "budget.gpu=unknown_gpu", "budget.gpus=8", "budget.days=14"],
     "budget.gpu='unknown_gpu' is not in the peak-FLOPs table"),
]


@pytest.fixture(scope="module")
def input_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad-input")
    for name, text in FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def run_entry(entry: str, args: list[str], *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"pipeline.{entry}", *args, *flags], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("entry, args, fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line_before_any_training(entry, args, fragment, input_dir, corpus_overrides,
                                                             tmp_path):
    # The corpus is the session's prepared one, so the sweep's data stage is a cache hit.
    args = [a.format(dir=input_dir) for a in args]
    proc = run_entry(entry, [*corpus_overrides, *args, f"results_dir={tmp_path / 'results'}",
                             f"out_dir={tmp_path / 'fit'}"])
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not list(tmp_path.rglob("run.json")) and not list(tmp_path.rglob("*.pt"))


def test_debug_flag_shows_the_traceback_then_the_same_line():
    proc = run_entry("train", ["experiment=no_such_preset"], "--debug")
    assert proc.returncode == 2
    assert proc.stderr.startswith("Traceback (most recent call last)")
    assert proc.stderr.strip().splitlines()[-1].startswith("error: bad override: unknown preset")


# --- validation must come before the data stage -------------------------------------------------------
@pytest.mark.parametrize("entry, args, fragment", [
    ("train", ["model.size=-5"], "cannot read model size '-5'"),
    ("sweep", ["sweep.sizes=[23k,23k]", "sweep.budgets_flops=[1e11]"], "lists 23k twice"),
    ("sweep", ["sweep.pilot_share=1.5", "budget.flops=1e15"], "pilot_share=1.5"),
], ids=["negative size", "duplicate size", "pilot share"])
def test_bad_sizes_and_shares_are_refused_before_preparing_data(entry, args, fragment, monkeypatch, tmp_path):
    import importlib

    def no_data_yet(_cfg):
        raise AssertionError("the data stage ran before the config was fully checked")

    for stage in ("pipeline.sweep.__main__", "pipeline.train.run"):  # every caller of the data stage
        monkeypatch.setattr(importlib.import_module(stage), "prepare_corpus", no_data_yet)
    main = importlib.import_module(f"pipeline.{entry}.__main__").main
    with pytest.raises(UserError) as err:
        main([*args, f"results_dir={tmp_path}", "train.threads=1"], {"cfg": False, "debug": False})
    assert fragment in str(err.value)


# --- nothing from a file is executed as code ----------------------------------------------------------
# module -> is this `module.load(<args>)` safe? (torch: no unpickling of arbitrary objects; yaml: no
# python tags; numpy: no pickled object arrays)
SAFE_LOAD = {"torch": lambda args: "weights_only=True" in args, "yaml": lambda args: "SafeLoader" in args,
             "np": lambda args: "allow_pickle=True" not in args, "numpy": lambda args: "allow_pickle=True" not in args}


def unsafe_calls(source: str) -> list[str]:
    """Code (not comments or strings) that could execute data: names the construct and its line."""
    tokens = [t for t in tokenize.generate_tokens(io.StringIO(source).readline)
              if t.type in (tokenize.NAME, tokenize.OP)]
    found = []
    for i, tok in enumerate(tokens):
        prev = tokens[i - 1].string if i else ""
        nxt = tokens[i + 1].string if i + 1 < len(tokens) else ""
        if tok.string in ("pickle", "cPickle", "dill", "marshal", "shelve") and prev in ("import", "from", ","):
            found.append(f"line {tok.start[0]}: import {tok.string}")
        elif tok.string in ("eval", "exec", "instantiate", "unsafe_load", "full_load") and nxt == "(" and prev != "def":
            if not (tok.string in ("eval", "exec") and prev == "."):  # model.eval() is not eval()
                found.append(f"line {tok.start[0]}: {tok.string}(")
        elif tok.string == "load" and prev == "." and nxt == "(" and tokens[i - 2].string in SAFE_LOAD:
            module, depth, j, args = tokens[i - 2].string, 0, i + 1, []
            while j < len(tokens):  # the call's arguments, up to the matching parenthesis
                depth += {"(": 1, ")": -1}.get(tokens[j].string, 0)
                args.append(tokens[j].string)
                if depth == 0:
                    break
                j += 1
            text = "".join(args)
            if not SAFE_LOAD[module](text):
                found.append(f"line {tok.start[0]}: {module}.load{text}")
        elif tok.string == "shell" and nxt == "=" and i + 2 < len(tokens) and tokens[i + 2].string == "True":
            found.append(f"line {tok.start[0]}: shell=True")
    return found


def test_the_scanner_finds_each_unsafe_construct():
    source = ("import pickle\nx = eval('1')\nstate = torch.load(path)\ncfg = yaml.load(text)\n"
              "a = np.load(p, allow_pickle=True)\nobj = instantiate(cfg)\nsubprocess.run(cmd, shell=True)\n"
              "ok = torch.load(path, weights_only=True)\nmodel.eval()\n# eval(comment)\ns = 'exec(string)'\n")
    assert unsafe_calls(source) == ["line 1: import pickle", "line 2: eval(", "line 3: torch.load(path)",
                                    "line 4: yaml.load(text)", "line 5: np.load(p,allow_pickle=True)",
                                    "line 6: instantiate(", "line 7: shell=True"]


def test_no_code_in_the_packages_executes_data():
    findings = {str(path.relative_to(REPO)): unsafe_calls(path.read_text())
                for package in ("pipeline", "models") for path in sorted((REPO / package).rglob("*.py"))}
    assert {path: found for path, found in findings.items() if found} == {}
