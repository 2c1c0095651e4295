"""What `trainer.pt` holds, built and read in this one place: everything that moves during training
besides the weights, so that a resumed run continues bit for bit.

Optimizer, schedule and loss scaler are global; the data position and the decoder-frame generator
are per rank (each rank reads its own shards and draws its own frames), so they are saved per rank
and a run resumes with the same number of ranks.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import torch

from csm_adapt.errors import CsmAdaptError
from csm_adapt.training import parallel
from csm_adapt.training.distributed import Dist


@attrs.define
class TrainerState:
    wrapped: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    loader: object  # TrainLoader: state_dict / load_state_dict per rank
    frame_gen: torch.Generator
    d: Dist

    def capture(self, step: int, best_val: float) -> dict:
        """The state after `step` optimizer steps (a collective under DDP/FSDP: call on every rank)."""
        return {
            "step": step,
            "best_val": best_val,
            "optimizer": parallel.full_optimizer_state(self.wrapped, self.optimizer),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "ranks": _gather({"loader": self.loader.state_dict(), "frame_gen": self.frame_gen.get_state()}, self.d),
        }

    def restore(self, step_dir: Path, state: dict, weights: dict | None) -> tuple[int, float]:
        """Put a saved state (and its weights, unless None: already loaded) back; returns (step, best val loss)."""
        if len(state["ranks"]) != self.d.world_size:
            raise CsmAdaptError(f"{step_dir} was saved by {len(state['ranks'])} rank(s); resume with the same number")
        parallel.load_full_state(self.wrapped, self.optimizer, weights, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        mine = state["ranks"][self.d.rank]
        self.loader.load_state_dict(mine["loader"])
        self.frame_gen.set_state(mine["frame_gen"])
        torch.set_rng_state(state["rng_cpu"])
        return state["step"], state["best_val"]


def _gather(obj, d: Dist) -> list:
    """Each rank's `obj`, in rank order."""
    if not d.enabled:
        return [obj]
    objs: list = [None] * d.world_size
    torch.distributed.all_gather_object(objs, obj)
    return objs
