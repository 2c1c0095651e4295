"""The torchrun ranks as the data steps see them: who this process is, and a wait for all of them.

The process group itself is joined by the command (`csm_adapt.training.distributed.init_distributed`);
outside torchrun, or before that, this process is rank 0 of 1 and waiting is a no-op.
"""

from __future__ import annotations

from datetime import timedelta

import torch.distributed as dist

# Ranks encode unequal amounts of audio (and a resumed run may leave some with nothing to do), so
# one may wait hours at a barrier: longer than the default group's timeout (10-30 minutes).
_WAIT = timedelta(hours=72)


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of torch.distributed's default group, or (0, 1) when there is none."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class Ranks:
    """This process's rank and a barrier for all ranks, with a timeout long enough for a prepare.

    Built by every rank at the same point (it creates a process group: a collective call).
    """

    def __init__(self) -> None:
        self.rank, self.world = rank_and_world()
        # gloo whatever the default backend: waiting needs no GPU, and gloo honours the timeout.
        self._group = dist.new_group(backend="gloo", timeout=_WAIT) if self.world > 1 else None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self._group is not None:
            dist.barrier(group=self._group)

    def close(self) -> None:
        if self._group is not None:
            dist.destroy_process_group(self._group)
            self._group = None
