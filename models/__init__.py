"""The model family: shapes (shape.py), exact parameter/FLOP accounting (accounting.py), the sizing
rule (sizing.py), the torch module (transformer.py) and Hugging Face export (hf_io.py).

Imports nothing from `pipeline`. This namespace is empty on purpose: shape.py, accounting.py and
sizing.py are plain arithmetic and import no torch, so the planner, the fit and the decision can size
and count models without loading torch; only transformer.py and hf_io.py import torch (and
transformers), and only code that builds a model imports them.
"""
