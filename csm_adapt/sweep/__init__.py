"""Hyperparameter sweeps with Optuna: `csm-adapt sweep` (runner.run_sweep)."""
