"""Contrastive decoding's shared pieces (VASparse, VCD): a plausibility cut, then the contrast; and
the record of both branches' top tokens per step that the trace and the debugger show."""

from __future__ import annotations

import numpy as np
import torch

TOP_K = 5


def contrast_logits(theta: torch.Tensor, phi: torch.Tensor, alpha: float, cut: float) -> torch.Tensor:
    """Plausibility cut (keep p_θ ≥ cut · max p_θ), then (1+α)·ℓ_θ − α·ℓ_φ; cut tokens −inf."""
    p = torch.softmax(theta, dim=-1)
    plausible = p >= cut * p.amax(-1, keepdim=True)
    return torch.where(plausible, (1 + alpha) * theta - alpha * phi, -torch.inf)


class TopLogits:
    """Per named branch, the top-``TOP_K`` logits of every step, kept on the device until the trace."""

    def __init__(self, *branches: str):
        self._rows: dict[str, list] = {name: [] for name in branches}

    def keep(self, branch: str, logits: torch.Tensor) -> None:
        """logits: (1, vocab), this step's."""
        self._rows[branch].append(logits[0].topk(TOP_K))

    def arrays(self) -> dict[str, np.ndarray]:
        """BRANCH_top_ids (T, TOP_K) int32 and BRANCH_top_logits (T, TOP_K) float32 per branch."""
        out: dict[str, np.ndarray] = {}
        for branch, rows in self._rows.items():
            out[f"{branch}_top_ids"] = (torch.stack([r.indices for r in rows]).int().cpu().numpy() if rows
                                        else np.zeros((0, TOP_K), np.int32))
            out[f"{branch}_top_logits"] = (torch.stack([r.values for r in rows]).float().cpu().numpy() if rows
                                           else np.zeros((0, TOP_K), np.float32))
        return out
