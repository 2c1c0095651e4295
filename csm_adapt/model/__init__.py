"""The model and everything needed to run it: CSM in plain PyTorch (`csm`, `llama`, named shapes in
`config`), checkpoint layouts and conversion (`checkpoint`, `transformers_layout`), the row layout
(`rows`), frame-by-frame generation (`generation`), the text tokenizer and the Mimi audio codec, and
text -> speech with all three (`synthesizer`).

May import: `csm_adapt.errors`, `audio_io`, `files` and itself; nothing from data, training,
config, the plugin engine, sweeps or commands (tests/test_architecture.py enforces it).
"""
