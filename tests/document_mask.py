"""The reference semantics of packed attention, as a dense mask: what the model's `Segments` path
computes without building it. For tests only."""

import torch


def attention_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """Causal within each packed sample, nothing across samples: [B, S] ids -> [B, 1, S, S] bool."""
    s = doc_ids.shape[1]
    causal = torch.ones(s, s, dtype=torch.bool, device=doc_ids.device).tril()
    same_doc = doc_ids[:, :, None] == doc_ids[:, None, :]
    return (same_doc & causal).unsqueeze(1)
