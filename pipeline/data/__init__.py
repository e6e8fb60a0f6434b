"""Stage 1, data: prepare a corpus once, then serve fixed validation and resumable training batches.

    manifest = prepare_corpus(cfg)                      # corpus.py: cached under cfg.cache_dir/<fingerprint>/
    sampler = TrainSampler(open_tokens(manifest, "train"), seq_len, seed)          # sampler.py
    x, y = sampler.batch(step, micro_step, micro_batch_size, rank, world_size, grad_accum)
    val = validation_batches(manifest, seq_len, batch_size)

corpus.py: sources, split order, caching; tokenizer.py: tokenizers, the split and the shards (and why a
512-token BPE); manifest.py: what a prepared corpus holds on disk; sampler.py: batches and repeats.
"""
