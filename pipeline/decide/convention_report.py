"""The report's parameter-convention line: does counting N as total or as non-embedding parameters move the answer?

Where embeddings dominate (tiny models with a fixed vocabulary: half of a 58k-parameter demo model is its
embedding and head) the two conventions grow at different rates across the pilots, so a law in one has
other exponents than a law in the other. The fit refits Approaches 3 and 2 under each convention the
table records (pipeline/fit/checks.py: convention_sensitivity); this line puts the two N_opt on one scale,
the non-embedding optimum converted to total parameters at the family's shape of that non-embedding size
(models/sizing.py), so a reader sees whether the convention decides the answer.
"""

from __future__ import annotations

from models.accounting import param_count
from models.sizing import SizingError, shape_for_params


def _as_total(n_non_embedding: float, shape: dict) -> float | None:
    try:
        sized = shape_for_params(n_non_embedding, shape["vocab_size"], shape["seq_len"], convention="non_embedding",
                                 tie_embeddings=bool(shape.get("tie_embeddings")), tolerance=0.5)
    except (SizingError, KeyError):
        return None
    return float(param_count(sized, "total"))


def convention_lines(recommendation: dict) -> list[str]:
    sens, shape = recommendation.get("sensitivity") or {}, (recommendation.get("model") or {}).get("shape") or {}
    total, non_emb = sens.get("total") or {}, sens.get("non_embedding") or {}
    if "parametric_n_opt" not in total or "parametric_n_opt" not in non_emb:
        return []
    converted = _as_total(non_emb["parametric_n_opt"], shape) if shape else None
    line = (f"Parameter convention (where embeddings dominate it can move the answer): Approach 3 fitted in total "
            f"parameters gives N_opt {total['parametric_n_opt']:.3g} (a = {total['parametric_a']:.3f}); the same runs "
            f"in non-embedding parameters give {non_emb['parametric_n_opt']:.3g} non-embedding (a = "
            f"{non_emb['parametric_a']:.3f})")
    if converted:
        ratio = converted / total["parametric_n_opt"]
        line += (f", {converted:.3g} total at the family's shape of that size: {ratio:.2f}x the total-parameter "
                 "answer")
    return ["## Parameter convention", "", line + " (the total-parameter N_opt is the main fit's; the non-embedding "
            "refit counts C = 6 N D in its own N, as Kaplan et al. 2020 do; pipeline/fit/checks.py).", ""]
