"""Exact parameter and FLOP counts of a `ModelShape`, without building the model.

Every fit names the N and the C it used (README, "Accounting conventions"), so each count here says which
parameters or operations it includes. A multiply-add counts as 2 FLOPs throughout.

Parameters of one block (no biases, as many key/value heads as query heads):
    attention  q, k, v, out projections      4 * d_model^2
    SwiGLU     gate, up (d_model -> d_ff), down  3 * d_model * d_ff
    two RMSNorm gains                        2 * d_model
"""

from __future__ import annotations

from models.shape import ModelShape, ShapeError

CONVENTIONS = ("total", "non_embedding", "embedding", "head")
FLOP_METHODS = ("exact", "6n")


def count_params(shape: ModelShape) -> dict[str, int]:
    """Parameters under each convention in `CONVENTIONS`.

    embedding: the input token table, vocab_size * d_model.
    head: the output projection, vocab_size * d_model -- or 0 when tied, because a tied head adds no
        parameter of its own: the shared matrix is counted once, under "embedding".
    non_embedding: everything else -- the blocks, their norms and the final norm (Kaplan et al. 2020's
        N also leaves out the embeddings; their head was tied, so it held no separate parameters).
    total: every unique parameter = embedding + head + non_embedding
        = sum(p.numel() for p in Transformer(shape).parameters()).
    """
    d = shape.d_model
    per_block = 4 * d * d + 3 * d * shape.d_ff + 2 * d
    embedding = shape.vocab_size * d
    head = 0 if shape.tie_embeddings else shape.vocab_size * d
    non_embedding = shape.n_layer * per_block + d  # + the final RMSNorm gain
    return {
        "total": embedding + head + non_embedding,
        "non_embedding": non_embedding,
        "embedding": embedding,
        "head": head,
    }


def param_count(shape: ModelShape, convention: str = "total") -> int:
    """One entry of `count_params`, with a helpful error for an unknown convention."""
    if convention not in CONVENTIONS:
        raise ShapeError(f"unknown parameter convention {convention!r}: use one of {', '.join(CONVENTIONS)}")
    return count_params(shape)[convention]


def matmul_params(shape: ModelShape) -> int:
    """Weights that take part in a matrix multiply: the blocks' projections plus the output head.

    The head is counted even when tied (the logits matmul runs either way); the input table is not (a
    lookup is not a matmul), nor are the RMSNorm gains. This is PaLM's N for MFU (see below).
    """
    d = shape.d_model
    return shape.n_layer * (4 * d * d + 3 * d * shape.d_ff) + shape.vocab_size * d


def _resolve_seq_len(shape: ModelShape, seq_len: int | None) -> int:
    """The run's sequence length, defaulting to the longest the shape accepts."""
    seq_len_tokens = shape.seq_len if seq_len is None else seq_len
    if isinstance(seq_len_tokens, bool) or not isinstance(seq_len_tokens, int) or seq_len_tokens <= 0:
        raise ShapeError(f"seq_len={seq_len!r} must be a positive integer: pass the run's sequence length")
    return seq_len_tokens


def forward_flops_breakdown(shape: ModelShape, seq_len: int | None = None) -> dict[str, float]:
    """Forward FLOPs per token, term by term, after Hoffmann et al. 2022 (Chinchilla), Appendix F.

    Appendix F counts per sequence; every term below is that count divided by seq_len (T), with
    d = d_model, V = vocab_size, L = n_layer, H = n_heads, H*head_dim = d:
        embedding          2 * V * d          App. F counts the lookup as a one-hot matmul; kept for
                                              comparability with Chinchilla's C.
        attention_qkv      L * 2 * 3 * d * d  q, k, v projections
        attention_logits   L * 2 * T * d      Q K^T: each token against all T keys
        attention_softmax  L * 3 * H * T      App. F's 3 FLOPs per attention score
        attention_values   L * 2 * T * d      softmax(QK^T) V
        attention_out      L * 2 * d * d      output projection
        mlp                L * 2 * 3 * d * d_ff  SwiGLU's gate, up and down matmuls (App. F has two)
        logits             2 * d * V          output head
    The causal mask is NOT halved: like App. F (and PaLM's MFU) every token is charged all T scores,
    which is also what a dense SDPA kernel computes. Not counted, as in App. F: RMSNorm, RoPE, residual
    adds, SiLU and the gating product, the loss.
    """
    d, v, t = shape.d_model, shape.vocab_size, _resolve_seq_len(shape, seq_len)
    layers = shape.n_layer
    return {
        "embedding": float(2 * v * d),
        "attention_qkv": float(layers * 2 * 3 * d * d),
        "attention_logits": float(layers * 2 * t * d),
        "attention_softmax": float(layers * 3 * shape.n_heads * t),
        "attention_values": float(layers * 2 * t * d),
        "attention_out": float(layers * 2 * d * d),
        "mlp": float(layers * 2 * 3 * d * shape.d_ff),
        "logits": float(2 * d * v),
    }


def training_flops_per_token(shape: ModelShape, seq_len: int | None = None, method: str = "exact") -> float:
    """Training FLOPs (forward + backward) per token; C = this * D tokens.

    "exact": 3 x the forward count of `forward_flops_breakdown` -- the backward pass costs twice the
        forward (Hoffmann et al. 2022, App. F; Kaplan et al. 2020, Sec. 2.1).
    "6n": 6 * N with N = total parameters, embeddings and head included (the Chinchilla convention;
        Kaplan et al. 2020 use non-embedding N instead). Ignores attention's T-dependent terms; with
        tied embeddings the shared matrix enters N once although it is used twice.
    """
    if method == "6n":
        return 6.0 * count_params(shape)["total"]
    if method == "exact":
        return 3.0 * sum(forward_flops_breakdown(shape, seq_len).values())
    raise ShapeError(f"unknown FLOP method {method!r}: use one of {', '.join(FLOP_METHODS)}")


def palm_mfu_flops_per_token(shape: ModelShape, seq_len: int | None = None) -> float:
    """Model FLOPs per training token for MFU: 6 N + 12 L H Q T (Chowdhery et al. 2022, PaLM, App. B).

    N = `matmul_params` (the blocks' projections + the output head, not the input lookup nor the norm
    gains); L layers, H heads of width Q, T = seq_len. Equals the "exact" count without the embedding
    lookup and softmax terms, which perform no matmul work.
    """
    t = _resolve_seq_len(shape, seq_len)
    return 6.0 * matmul_params(shape) + 12.0 * shape.n_layer * shape.n_heads * shape.head_dim * t
