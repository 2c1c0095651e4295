"""Training: `loop.train(recipe)` and its parts — one optimizer step (`step`), optimizer and
schedules (`optim`), loss parts and accuracy (`losses`), run checkpoints and what `trainer.pt` holds
(`run_checkpoints`, `trainer_state`), audio samples (`samples`), the loggers as one (`loggers`),
frames/s (`throughput`), DDP/FSDP wrapping (`parallel`) and torchrun helpers (`distributed`).

May import: the model, data, config, the plugin engine and the foundation modules (`errors`,
`audio_io`, `plugin_api`); never sweeps or commands (tests/test_architecture.py enforces it).
"""
