"""Hyperparameter sweeps with Optuna: `csm-adapt sweep` (`runner.run_sweep`). The search space is
checked against the recipe (`space`), the study shared through its storage (`study`), trials run in
worker processes (`launcher` starts them, `worker` is one), and the results reported (`report`).

May import: config, data (prepare once), training (each trial is a `train()` call) and the
foundation modules; never commands (tests/test_architecture.py enforces it).
"""
