"""Facts the tool knows without the network: tokenizer vocabularies, and the full-run presets.

KNOWN_VOCAB_SIZES: the model vocabulary (embedding rows, `len(tokenizer)`) of well-known hub tokenizers,
so a dry run plans shapes and FLOPs from the config alone, never loading a tokenizer. A corpus prepared
with one of them records the same number (pipeline/data/tokenizer.py: `len(hub_tokenizer)`).

FULL_RUN_PRESETS: what a full run trains on when there are no pilots to copy it from (a published law,
runs imported from a CSV or W&B): its tokenizer, vocabulary, sequence length and precision, stated in
the recommendation. `study` means the composed config's own data and model sections.
"""

from __future__ import annotations

KNOWN_VOCAB_SIZES: dict[str, int] = {
    "gpt2": 50257,                          # GPT-2 BPE (Radford et al. 2019): 50,000 merges + 256 bytes + <|endoftext|>
    "openai-community/gpt2": 50257,
    "EleutherAI/gpt-neox-20b": 50277,       # GPT-NeoX BPE (Black et al. 2022): 50,254 + special tokens
    "meta-llama/Llama-2-7b-hf": 32000,      # LLaMA-2 SentencePiece (Touvron et al. 2023)
    "mistralai/Mistral-7B-v0.1": 32000,
}

FULL_RUN_PRESETS: dict[str, dict] = {
    # The h100_pilot preset's data and model: GPT-2's tokenizer, 2,048-token sequences, bf16 on GPUs.
    # Its corpus is the h100_pilot preset's (conf/data/fineweb_edu.yaml), at the largest sample that names its
    # size: FineWeb-Edu's sample-350BT, ~350B GPT-2 tokens (dataset card), so a larger D is flagged (epochs).
    "gpt2-2048": {"tokenizer": "gpt2", "vocab_size": 50257, "seq_len": 2048, "precision": "bf16",
                  "data": {"source": "hf:HuggingFaceFW/fineweb-edu", "hf_config": "sample-350BT", "hf_split": "train",
                           "text_field": "text", "tokenizer": "gpt2", "val_tokens": 2097152,
                           "max_train_tokens": 350_000_000_000, "allow_repeat": True, "seed": 0},
                  "unique_tokens": 3.5e11,
                  "unique_tokens_source": "FineWeb-Edu sample-350BT, ~350B GPT-2 tokens (its dataset card)",
                  "why": "GPT-2 tokenizer (50,257) at 2,048 tokens in bf16 on FineWeb-Edu, as "
                         "conf/experiment/h100_pilot.yaml"},
}
STUDY_PRESET = "study"
DEFAULT_FULL_RUN_PRESET = "gpt2-2048"
