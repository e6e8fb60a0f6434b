"""The code's shape is the pipeline's shape: stages import only earlier stages, nothing imports in a cycle,
`models` stands alone, and the fit and the decision never load torch."""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The stages in the order data flows through them; a module may import its own stage or an earlier one.
STAGES = ["errors", "config", "cli", "data", "plan", "records", "train", "sweep", "fit", "decide"]
SUBPACKAGES = ["config", "data", "plan", "train", "sweep", "fit", "decide"]


def project_modules() -> dict[str, Path]:
    out = {}
    for root in ("pipeline", "models"):
        for path in sorted((REPO / root).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = project_modules()


def imports_of(path: Path) -> list[tuple[str, bool]]:
    """(imported project module, imported inside a function?) for every import in the file."""
    tree = ast.parse(path.read_text())
    found = []

    def visit(node, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                found.extend((a.name, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                for a in child.names:  # `from pipeline.data import corpus` imports the module pipeline.data.corpus
                    sub = f"{child.module}.{a.name}"
                    found.append((sub if sub in MODULES else child.module, in_function))
            visit(child, nested)

    visit(tree, False)
    return [(name, inside) for name, inside in found if name.split(".")[0] in ("pipeline", "models")]


def stage_of(module: str) -> int | None:
    parts = module.split(".")
    return STAGES.index(parts[1]) if parts[0] == "pipeline" and len(parts) > 1 else None


def is_entry_point(module: str) -> bool:
    # `python -m pipeline.fit` runs the fit and then the decision: a command may chain stages.
    return module.endswith(".__main__")


def test_every_subpackage_imports_on_its_own():
    for name in SUBPACKAGES:
        subprocess.run([sys.executable, "-c", f"import pipeline.{name}"], cwd=REPO, check=True)


def test_stages_import_only_earlier_stages_and_models_imports_no_pipeline():
    backwards = []
    for module, path in MODULES.items():
        for target, _ in imports_of(path):
            if module.startswith("models") and target.startswith("pipeline"):
                backwards.append(f"{module} -> {target} (models must not import pipeline)")
            src, dst = stage_of(module), stage_of(target)
            if src is not None and dst is not None and dst > src and not is_entry_point(module):
                backwards.append(f"{module} ({STAGES[src]}) -> {target} ({STAGES[dst]})")
    assert not backwards, "imports against the flow:\n" + "\n".join(backwards)


def test_no_import_cycles_and_no_imports_hidden_in_functions():
    graph = {m: {t for t, _ in imports_of(p) if t in MODULES and t != m} for m, p in MODULES.items()}
    hidden = [f"{m} imports {t} inside a function" for m, p in MODULES.items() for t, inside in imports_of(p)
              if inside and t in MODULES and not (m == "pipeline.sweep.slurm_task" and t == m)]
    assert not hidden, "\n".join(hidden)
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def dfs(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path[path.index(nxt):], nxt]))
            if nxt not in state:
                dfs(nxt, [*path, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            dfs(module, [module])


def test_the_layer_check_catches_a_backward_import(tmp_path):
    """The checker itself sees top-level and in-function imports (so the tests above can fail)."""
    bad = tmp_path / "bad.py"
    bad.write_text("from pipeline.train.run import execute\n\ndef f():\n    from pipeline.fit import laws\n")
    found = imports_of(bad)
    assert ("pipeline.train.run", False) in found and ("pipeline.fit.laws", True) in found
    assert stage_of("pipeline.fit.laws") > stage_of("pipeline.train.run")  # so fit -> train is allowed, train -> fit not


HEAVY = ("torch", "transformers", "accelerate")


def test_fit_and_decide_never_import_torch(tmp_path):
    """A published-law recommendation, end to end through the fit command, loads no torch."""
    script = f"""
import json, sys
import pipeline.fit.fit_all, pipeline.fit.sources, pipeline.fit.plots, pipeline.decide.recommend, pipeline.decide.report
from pipeline.fit.__main__ import main
code = main(["law=epoch", "budget.flops=1e23", "out_dir={tmp_path / 'fit'}"], {{"cfg": False, "debug": False}})
print(json.dumps({{"code": code, "loaded": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"code": 0, "loaded": []}
    assert json.loads((tmp_path / "fit" / "recommendation.json").read_text())["n_opt"] > 1e10


@pytest.mark.parametrize("module", ["pipeline.plan.design", "pipeline.plan.runspec", "pipeline.config.load"])
def test_planning_and_config_load_without_torch(module):
    code = f"import sys, {module}; print([m for m in {HEAVY!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_imports_resolve_to_this_checkout():
    assert Path(importlib.import_module("pipeline").__file__).resolve().parent == REPO / "pipeline"
