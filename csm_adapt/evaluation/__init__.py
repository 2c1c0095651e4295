"""Evaluation of generated speech: eval prompts, batched generation, evaluator plugins, aggregation
and reports. Used by the training loop (`[eval]`) and by `csm-adapt evaluate`; imports nothing from
training/commands/sweep."""
