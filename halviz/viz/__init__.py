"""Pure functions from a :class:`~halviz.trace.Trace` to figures; no Gradio, no model, no tensors.

Every figure states the step and token it shows, which layers and heads it averages, and the grid.
"""

from halviz.viz.common import Choice, key_label, layer_text, message_figure, readable, step_token
from halviz.viz.curves import entropy_figure
from halviz.viz.grid_views import PRIMARY, TILES_IN_PLACE, view_choices
from halviz.viz.heads import tvhd_figure, vhd_figure
from halviz.viz.lens import lens_heatmap_figure, lens_words_figure
from halviz.viz.method_data import HeadMaps, KeptMask, kept_masks, var_record, vhr_maps
from halviz.viz.method_figures import (candidates_figure, prunehal_figure, vasparse_logits_figure,
                                       vasparse_selection_figure, vasparse_sink_figure)
from halviz.viz.patches import PatchGrid, attention_overlay, kept_mask_figure, patch_grid, patch_values
from halviz.viz.sinks import segment_share_figure, top_keys_figure
from halviz.viz.text import CURRENT_STEP, span_offset, step_at_offset, token_spans
from halviz.viz.var_figures import var_heads_figure, var_moved_figure, var_sinks_figure

__all__ = [
    "CURRENT_STEP", "Choice", "HeadMaps", "KeptMask", "PRIMARY", "PatchGrid", "TILES_IN_PLACE", "attention_overlay",
    "candidates_figure",
    "entropy_figure", "kept_mask_figure", "kept_masks", "key_label", "layer_text", "lens_heatmap_figure",
    "lens_words_figure", "message_figure",
    "patch_grid", "patch_values", "prunehal_figure", "readable", "segment_share_figure", "span_offset",
    "step_at_offset", "step_token", "token_spans", "top_keys_figure", "tvhd_figure", "vasparse_logits_figure",
    "vasparse_selection_figure", "vasparse_sink_figure", "var_heads_figure", "var_moved_figure", "var_record",
    "var_sinks_figure", "vhd_figure", "vhr_maps", "view_choices",
]
