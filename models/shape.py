"""The shape of one model of the family: every number that fixes its architecture.

A `ModelShape` is a plain frozen value, so the planner can size, count and compare models without
allocating them (see `models.accounting`), and records can store it as a dict.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


class ShapeError(ValueError):
    """A model shape, or a call on one, that cannot work; the message says what to change."""

    def __init__(self, message: str):
        if "\n" in message:
            raise ValueError("ShapeError messages must fit on one line")
        super().__init__(message)


_POSITIVE_INT_FIELDS = ("n_layer", "d_model", "n_heads", "d_ff", "vocab_size", "seq_len")


@dataclass(frozen=True)
class ModelShape:
    """Decoder-only transformer: pre-norm RMSNorm, RoPE, SwiGLU MLP, no biases, final norm.

    n_layer: transformer blocks.  d_model: residual width.  n_heads: attention heads (as many key/value
    heads; no grouped-query attention).  d_ff: SwiGLU hidden width.  vocab_size: tokens.  seq_len: the
    longest sequence the model accepts (RoPE has no learned positions, so it costs no parameters).
    tie_embeddings: the output head reuses the input embedding matrix.
    """

    n_layer: int
    d_model: int
    n_heads: int
    d_ff: int
    vocab_size: int
    seq_len: int
    tie_embeddings: bool = False
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for name in _POSITIVE_INT_FIELDS:
            value = getattr(self, name)
            # bool is an int subclass; `n_layer=True` is a typo, not a depth of one.
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ShapeError(f"ModelShape.{name}={value!r} must be a positive integer: pass e.g. {name}=4")
        if not isinstance(self.tie_embeddings, bool):
            raise ShapeError(
                f"ModelShape.tie_embeddings={self.tie_embeddings!r} must be a bool: pass True or False"
            )
        if self.d_model % self.n_heads != 0:
            raise ShapeError(
                f"n_heads={self.n_heads} does not divide d_model={self.d_model}: "
                f"pick n_heads among the divisors of {self.d_model} (e.g. d_model // 64)"
            )
        if self.head_dim % 2 != 0:
            # RoPE rotates pairs of channels (Su et al. 2021, Eq. 34), so each head needs an even width.
            raise ShapeError(
                f"head_dim={self.head_dim} (d_model/n_heads) is odd but RoPE rotates channel pairs: "
                f"choose n_heads so that d_model/n_heads is even"
            )
        if not self.rope_theta > 0:
            raise ShapeError(f"ModelShape.rope_theta={self.rope_theta!r} must be > 0: use 10000.0")
        if not self.norm_eps > 0:
            raise ShapeError(f"ModelShape.norm_eps={self.norm_eps!r} must be > 0: use 1e-5")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def aspect_ratio(self) -> float:
        """d_model / n_layer, the width-to-depth ratio of Kaplan et al. 2020, Fig. 5."""
        return self.d_model / self.n_layer

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelShape:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ShapeError(
                f"unknown ModelShape field(s) {unknown}: remove them; valid fields are {sorted(known)}"
            )
        missing = sorted(f.name for f in fields(cls) if f.name in _POSITIVE_INT_FIELDS and f.name not in values)
        if missing:
            raise ShapeError(f"ModelShape is missing field(s) {missing}: add them")
        return cls(**values)

    def describe(self) -> str:
        """One line for logs and tables."""
        tied = ", tied" if self.tie_embeddings else ""
        return (
            f"L={self.n_layer} d={self.d_model} H={self.n_heads}x{self.head_dim} ff={self.d_ff} "
            f"V={self.vocab_size} T={self.seq_len}{tied}"
        )
