"""The report's parameter-convention line puts both conventions' N_opt on the total-parameter scale."""

from __future__ import annotations

import pytest

from models.accounting import param_count
from models.sizing import shape_for_params
from pipeline.decide.convention_report import convention_lines

SHAPE = {"vocab_size": 512, "seq_len": 128, "tie_embeddings": False}


def test_the_non_embedding_optimum_is_converted_at_the_familys_shape():
    rec = {"sensitivity": {"total": {"parametric_n_opt": 7.0e5, "parametric_a": 0.29},
                           "non_embedding": {"parametric_n_opt": 6.0e5, "parametric_a": 0.39}},
           "model": {"shape": SHAPE}}
    lines = convention_lines(rec)
    total = param_count(shape_for_params(6.0e5, 512, 128, convention="non_embedding", tolerance=0.5), "total")
    assert total > 6.0e5                                  # the embedding and head come on top
    assert lines[0] == "## Parameter convention"
    assert f"{total:.3g} total" in lines[2] and f"{total / 7.0e5:.2f}x the total-parameter answer" in lines[2]


def test_no_line_without_both_conventions():
    assert convention_lines({"sensitivity": {"total": {"parametric_n_opt": 7e5, "parametric_a": 0.3}}}) == []
    assert convention_lines({}) == []


@pytest.mark.parametrize("shape", [{}, {"vocab_size": 512}])
def test_without_a_shape_the_line_gives_both_optima_unconverted(shape):
    rec = {"sensitivity": {"total": {"parametric_n_opt": 7e5, "parametric_a": 0.3},
                           "non_embedding": {"parametric_n_opt": 6e5, "parametric_a": 0.4}}, "model": {"shape": shape}}
    line = convention_lines(rec)[2]
    assert "6e+05 non-embedding" in line and "x the total-parameter answer" not in line
