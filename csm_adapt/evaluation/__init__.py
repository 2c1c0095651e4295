"""Evaluation of generated speech: eval prompts, batched generation, evaluator plugins, aggregation
and reports. Used by the training loop (`[eval]`) and by `csm-adapt evaluate`.

May import: the foundation modules, the model, data and config; never training, sweeps or
commands (tests/test_architecture.py enforces it).
"""
