"""Data: from a reader's samples to training batches. `prepare` turns a dataset into WebDataset
shards (`encode` decodes, checks and encodes clips; `shard_writer` writes tars; `splits` picks the
validation set); `format` owns the shard format; `loader` streams shards, `packing` plans row
sequences, `batches` builds padded batches.

May import: `csm_adapt.errors`, `audio_io`, `plugin_api`, the model (tokenizer, codec, row layout)
and config; never training, sweeps or commands (tests/test_architecture.py enforces it).
"""
