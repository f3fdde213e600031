"""The page's controller: the callbacks of each job (``compare_callbacks``, ``trace_callbacks``,
``whatif_callbacks``) on one object, and their wiring to the layout. Every failure reaches the user as
a raised ``gr.Error`` sentence (``ui/errors.py``); never a stack trace."""

from __future__ import annotations

from halviz.ui.compare_callbacks import CompareCallbacks
from halviz.ui.errors import user_errors
from halviz.ui.layout import Layout
from halviz.ui.page_service import HalvizApp
from halviz.ui.trace_callbacks import TraceCallbacks
from halviz.ui.whatif_callbacks import WhatIfCallbacks


class Controller(CompareCallbacks, TraceCallbacks, WhatIfCallbacks):
    """The callbacks; each returns ``{component: update}`` for the layout it was built with."""

    def __init__(self, app: HalvizApp, layout: Layout):
        self.app = app
        self.ui = layout

    # ---- wiring -------------------------------------------------------------------------------------
    def wire(self) -> None:
        ui, panel = self.ui, self.ui.panel
        private = dict(api_visibility="private", show_progress="hidden")
        knob_components = [c for _, _, c in ui.knobs.components]
        settings_inputs = [ui.knob_defaults, *knob_components]
        for component in knob_components:
            component.change(ui.knobs.settings_json, inputs=settings_inputs, outputs=ui.settings, queue=False,
                             **private)
        ui.model.change(user_errors(self.knobs_for_model), inputs=[ui.model, ui.knob_defaults, *knob_components],
                        outputs=[ui.knob_defaults, *ui.knobs.notes.values(), *knob_components], queue=False,
                        **private) \
            .then(ui.knobs.settings_json, inputs=settings_inputs, outputs=ui.settings, queue=False, **private)
        ui.methods.change(ui.knobs.visibility, inputs=ui.methods, outputs=list(ui.knobs.accordions.values()),
                          queue=False, **private)
        # Ground truth belongs to a picture: every change of picture resets the box to the picture's own list.
        ui.image.change(user_errors(self.image_changed), inputs=[ui.image, ui.slot_methods, ui.runs, panel.choice],
                        outputs=[ui.truth, ui.truth_note, ui.status, ui.runs, *panel.trace_outputs],
                        preprocess=False, trigger_mode="always_last", **private)
        ui.truth.change(user_errors(self.app.truth_note), inputs=[ui.image, ui.truth], outputs=ui.truth_note,
                       preprocess=False, trigger_mode="always_last", **private)

        run_event = ui.run.click(
            self.compare,
            inputs=[ui.image, ui.prompt, ui.methods, ui.max_tokens, ui.truth, ui.model, ui.settings, ui.runs],
            outputs=self.compare_outputs, api_name="compare", preprocess=False, show_progress="minimal",
            concurrency_id="decode",  # one pool with the re-runs: at most `concurrency` decodes in all
            api_description="Caption one image with several decoding methods; streams every column, "
                            "the last output is a JSON summary per method. Knobs missing from the settings "
                            "JSON take the model's own defaults (its method_defaults.json), else the papers'.",
        )
        run_event.success(user_errors(self.show_first), inputs=[ui.runs, ui.slot_methods],
                          outputs=panel.trace_outputs, **private)
        ui.stop.click(user_errors(self.stop), inputs=[ui.runs, ui.slot_methods, ui.live],
                      outputs=[ui.status, ui.summary_json, ui.trace_files, *(s.summary for s in ui.slots)],
                      cancels=[run_event], **private) \
            .then(user_errors(self.show_first), inputs=[ui.runs, ui.slot_methods], outputs=panel.trace_outputs,
                  **private)

        panel.choice.input(user_errors(panel.show), inputs=[ui.runs, panel.choice], outputs=panel.trace_outputs,
                           **private)
        whatif = panel.whatif
        step_inputs = [ui.runs, panel.choice, panel.step, panel.layer, panel.head, whatif.selection]
        for trigger in (panel.step.input, panel.layer.input, panel.head.input, panel.view.input):
            trigger(user_errors(panel.at_step), inputs=[*step_inputs, panel.view], outputs=panel.step_outputs,
                    trigger_mode="always_last", **private)
        panel.caption.select(user_errors(self.jump_from_tokens),
                             inputs=[ui.runs, panel.choice, panel.layer, panel.head, whatif.selection, panel.view],
                             outputs=[panel.step, *panel.step_outputs], **private)
        picked = [whatif.selection, *whatif.view_outputs]
        whatif.patches.select(user_errors(self.pick_patch), inputs=[*step_inputs, whatif.mode], outputs=picked,
                              **private)
        whatif.heads.select(user_errors(self.pick_head), inputs=step_inputs, outputs=picked, **private)
        whatif.take_head.click(user_errors(self.take_head), inputs=step_inputs, outputs=picked, **private)
        whatif.clear.click(user_errors(self.clear_box), inputs=step_inputs, outputs=picked, **private)
        whatif.clear_heads.click(user_errors(self.clear_heads), inputs=step_inputs, outputs=picked, **private)
        for control in whatif.options:
            control.input(user_errors(self.set_options), inputs=[*step_inputs, *whatif.options],
                          outputs=picked, trigger_mode="always_last", **private)
        ui.run.click(self.clear_whatif, outputs=[*(s.column for s in ui.whatif_slots), ui.whatif], queue=False,
                     **private)
        rerun_event = whatif.rerun.click(self.rerun, inputs=[ui.runs, panel.choice, whatif.selection, ui.whatif,
                                                             ui.trace_files],
                                         outputs=self.rerun_outputs, show_progress="minimal", preprocess=False,
                                         api_visibility="private", concurrency_id="decode")
        ui.stop.click(None, cancels=[rerun_event], **private)  # Stop ends a re-run too
        for index, slot in enumerate(ui.whatif_slots):
            slot.open.click(self.open_whatif(index), inputs=[ui.runs, ui.whatif], outputs=panel.trace_outputs,
                            **private)
            slot.caption.select(self.jump_from_whatif(index), inputs=[ui.runs, ui.whatif],
                                outputs=panel.trace_outputs, **private)
        for index, slot in enumerate(ui.slots):
            slot.caption.select(self.jump_from_column(index), inputs=[ui.runs, ui.slot_methods],
                                outputs=panel.trace_outputs, **private)
        # Kaleido drives a browser per save: one save at a time, in its own pool beside the decodes.
        panel.save_figures.click(user_errors(self.save_figures),
                                 inputs=[ui.runs, panel.choice, panel.step, panel.layer, panel.head, panel.view,
                                         panel.figure_format],
                                 outputs=panel.figure_files, concurrency_id="figures", concurrency_limit=1,
                                 api_visibility="private", show_progress="minimal")
        ui.upload.upload(user_errors(self.replay), inputs=[ui.upload, ui.image, ui.runs],
                         outputs=[ui.runs, ui.upload, *panel.trace_outputs], preprocess=False, **private)
