"""The selectable learning-rate and batch rules (`train.hparam_rule`), as power laws in N, D and C.

Each rule states where its data lies, so a run can say how far beyond it it extrapolates. The rules,
their citations and their measured loss penalties on Step Law's released sweeps: pipeline/plan/hparams.py
and docs/hparams.md. A calibrated rule is read from the `lr_law.json` the LR probe's fit writes
(pipeline/fit/lr_law.py); this module only reads that file's numbers, it never fits.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import UserError

DEEPSEEK_LR = (0.3118, -0.1250)
DEEPSEEK_BATCH_TOKENS = (0.2920, 0.3271)
STEPLAW_LR = (1.79, -0.713, 0.307)       # coefficient, exponent of N (non-embedding), exponent of D
STEPLAW_BATCH_TOKENS = (0.58, 0.571)      # coefficient, exponent of D


@dataclass(frozen=True)
class Scale:
    """What a rule may read: the run's compute, parameter counts and token count."""

    flops: float
    n_params: float                        # total parameters
    n_params_non_embedding: float | None   # None: not given (rules fall back to the total, labelled)
    run_tokens: float


@dataclass(frozen=True)
class PowerLaw:
    """coef * N**exp_n * D**exp_d * C**exp_c."""

    coef: float
    exp_n: float = 0.0
    exp_d: float = 0.0
    exp_c: float = 0.0

    def __call__(self, n: float, d: float, c: float) -> float:
        return self.coef * n**self.exp_n * d**self.exp_d * c**self.exp_c

    def text(self) -> str:
        terms = [f"{self.coef:.4g}"] + [f"{axis}^{e:.4g}" for axis, e in (("N", self.exp_n), ("D", self.exp_d),
                                                                             ("C", self.exp_c)) if e]
        return "*".join(terms)


@dataclass(frozen=True)
class HparamRule:
    name: str
    citation: str
    lr_law: PowerLaw
    batch_law: PowerLaw                    # tokens per batch
    n_convention: str = "non_embedding"    # which N the laws read: non_embedding | total
    data_range: dict = field(default_factory=dict)   # axis ("N", "D", "C") -> (lo, hi) of the data behind it
    lr_curvature: float | None = None      # relative loss per (ln LR)^2 at the optimum, where measured
    lr_residual_sd: float | None = None    # sd of ln(best LR) about the law at the probed sizes, where measured
    probe: dict | None = None              # a calibrated rule's probe: per-size curves and optima (lr_law.json)

    def n_of(self, scale: Scale) -> float:
        if self.n_convention == "non_embedding" and scale.n_params_non_embedding is not None:
            return scale.n_params_non_embedding
        return scale.n_params

    def _axes(self, scale: Scale) -> dict:
        return {"N": self.n_of(scale), "D": scale.run_tokens, "C": scale.flops}

    def lr(self, scale: Scale) -> float:
        return self.lr_law(self.n_of(scale), scale.run_tokens, scale.flops)

    def batch_tokens(self, scale: Scale) -> float:
        return self.batch_law(self.n_of(scale), scale.run_tokens, scale.flops)

    def _n_note(self, scale: Scale) -> str:
        uses_n = self.lr_law.exp_n or self.batch_law.exp_n
        if uses_n and self.n_convention == "non_embedding" and scale.n_params_non_embedding is None:
            return " (N total: the non-embedding count was not given)"
        return f", N {self.n_convention.replace('_', '-')}" if uses_n else ""

    def lr_label(self, scale: Scale) -> str:
        return f"{self.citation}: {self.lr_law.text()}{self._n_note(scale)}"

    def batch_label(self, scale: Scale) -> str:
        return f"{self.citation}: {self.batch_law.text()} tokens"

    @property
    def fitted_range(self) -> str:
        return ", ".join(f"{axis} {lo:.2g}-{hi:.2g}" for axis, (lo, hi) in self.data_range.items())

    def decades_beyond(self, scale: Scale) -> float:
        """log10 distance from the rule's data on the axis furthest out (0 inside the range)."""
        axes = self._axes(scale)
        out = 0.0
        for axis, (lo, hi) in self.data_range.items():
            value = axes[axis]
            if value > 0:
                out = max(out, math.log10(lo / value), math.log10(value / hi))
        return out

    def lr_loss_cost(self, factor: float) -> float | None:
        """Relative loss cost of an LR `factor` x off the optimum, from the measured curvature."""
        return None if self.lr_curvature is None else self.lr_curvature * math.log(factor) ** 2

    def to_dict(self) -> dict:
        calibrated = {k: v for k, v in (("lr_residual_sd", self.lr_residual_sd), ("probe", self.probe)) if v is not None}
        return {"name": self.name, "citation": self.citation, "lr_law": vars(self.lr_law),
                "batch_law": vars(self.batch_law), "n_convention": self.n_convention,
                "data_range": {k: list(v) for k, v in self.data_range.items()}, "lr_curvature": self.lr_curvature,
                **calibrated}   # published rules: only the keys they have (their records and run ids stay put)

    @classmethod
    def from_dict(cls, values: dict) -> HparamRule:
        return cls(name=values["name"], citation=values["citation"], lr_law=PowerLaw(**values["lr_law"]),
                   batch_law=PowerLaw(**values["batch_law"]), n_convention=values.get("n_convention", "non_embedding"),
                   data_range={k: tuple(v) for k, v in values.get("data_range", {}).items()},
                   lr_curvature=values.get("lr_curvature"), lr_residual_sd=values.get("lr_residual_sd"),
                   probe=values.get("probe"))


RULES: dict[str, HparamRule] = {
    "steplaw2025": HparamRule(
        name="steplaw2025", citation="Step Law (Li et al. 2025, Predictable Scale I)",
        lr_law=PowerLaw(STEPLAW_LR[0], exp_n=STEPLAW_LR[1], exp_d=STEPLAW_LR[2]),
        batch_law=PowerLaw(STEPLAW_BATCH_TOKENS[0], exp_d=STEPLAW_BATCH_TOKENS[1]),
        data_range={"N": (2.1e8, 1.1e9), "D": (4e9, 1e11)}),
    "deepseek2024": HparamRule(
        name="deepseek2024", citation="DeepSeek LLM 2024 eq.1",
        lr_law=PowerLaw(DEEPSEEK_LR[0], exp_c=DEEPSEEK_LR[1]),
        batch_law=PowerLaw(DEEPSEEK_BATCH_TOKENS[0], exp_c=DEEPSEEK_BATCH_TOKENS[1]),
        data_range={"C": (1e17, 2e19)}),
}


def load_rule(name_or_path: str) -> HparamRule:
    """A rule by name (RULES), or the calibrated rule in an `lr_law.json` (path)."""
    key = str(name_or_path)
    if key in RULES:
        return RULES[key]
    if key.endswith(".json"):
        path = Path(key)
        if not path.is_absolute() and not path.exists():   # a committed calibration, named from the repository root
            path = Path(__file__).resolve().parents[2] / key
        try:
            values = json.loads(path.read_text())
            return HparamRule.from_dict(values["rule"])
        except FileNotFoundError:
            raise UserError(f"train.hparam_rule={key}: no such file; run the LR probe's fit first "
                            "(python -m pipeline.fit on the lr_probe sweep writes lr_law.json)") from None
        except (ValueError, KeyError, TypeError) as err:
            raise UserError(f"train.hparam_rule={key} is not an lr_law.json written by the LR probe's fit ({err}): "
                            "point it at one, or use one of " + ", ".join(RULES)) from None
    raise UserError(f"train.hparam_rule={key!r} is unknown: use one of {', '.join(RULES)} or the path of an "
                    "lr_law.json written by the LR probe's fit")
