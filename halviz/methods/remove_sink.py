"""Remove the attention sink: what the caption becomes when no query may attend to BOS.

An intervention for teaching, not a paper's method. In the chosen layers every query after the
first ``tokens`` positions gets −inf on those key columns (BOS alone by default), so its softmax
is renormalised over the rest of the sequence. The first ``tokens`` queries keep their own row
(masking it would leave them nothing to attend to). Every pass is edited, the prompt's included,
in every row of the column (a text-only stream also starts with BOS).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from halviz.methods.base import Knob, Method
from halviz.methods.layer_range import chosen_layers, layer_knobs

if TYPE_CHECKING:
    from halviz.engine.rows import Column, Pass


class RemoveSink(Method):
    name = "remove_sink"
    title = "Remove sink"
    summary = "Intervention: no query may attend to BOS (or the first few tokens) in the chosen layers."
    reference = "intervention (cf. Gu et al., ICLR 2025; Xiao et al., StreamingLLM)"
    knobs = (Knob("tokens", "Sink tokens masked", 1, 1, 16, 1, help="key positions 0..n−1 are masked (1 = BOS alone)"),
             *layer_knobs("masks the sink"))
    hook_points = frozenset({"scores"})
    edits_prefill = True

    def setup(self, column: Column) -> None:
        self.layers = chosen_layers(column.num_layers, int(self.params["first_layer"]), int(self.params["last_layer"]))
        self.tokens = int(self.params["tokens"])

    def wants_scores(self, p: Pass, layer: int) -> bool:
        return layer in self.layers

    def edit_scores(self, p: Pass, layer: int, scores: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        q, kv = scores.shape[-2:]
        queries = torch.arange(kv - q, kv, device=scores.device)
        columns = torch.arange(kv, device=scores.device)
        hidden = (queries[:, None] >= self.tokens) & (columns[None, :] < self.tokens)  # (q, kv)
        return scores.masked_fill(hidden, float("-inf"))
