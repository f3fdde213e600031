"""The guided lesson "the attention sink": four buttons that set the inputs (or open the debugger) for
each step, say in one sentence what to do and where to look, and scroll the page there.

Layout and callbacks only; the facts each step states come from :mod:`halviz.toy.lesson`.
"""

from __future__ import annotations

from dataclasses import dataclass
import gradio as gr

from halviz.models import DEFAULT_PROMPT
from halviz.models.loading import TOY_KEY
from halviz.toy.lesson import EXAMPLE_FILE, PARTNER, STEPS, TRIGGER, patches_covering, sink_sentence, step_naming
from halviz.ui.controller import Controller
from halviz.ui.errors import user_errors
from halviz.session.escaping import markdown_text
from halviz.session.selection import Selection

LESSON_TOKENS = 64
INTRO = ("Four steps on the toy model, for a class in front of one screen: each button sets the inputs (or opens "
         "the debugger) for its step and points at the part of the page to look at.")


def scroll_to(element_id: str) -> str:
    """Browser-side: bring the element into view (run after the step's own update)."""
    return (f"() => {{ const e = document.getElementById('{element_id}'); "
            "if (e) e.scrollIntoView({behavior: 'smooth', block: 'start'}); }")


@dataclass
class LessonPanel:
    note: gr.Markdown  # the current step's sentence
    buttons: list[gr.Button]

    @classmethod
    def build(cls) -> "LessonPanel":
        with gr.Accordion("Lesson: the attention sink (four steps on the toy model)", open=False,
                          elem_id="hv-lesson"):
            gr.Markdown(INTRO, elem_classes=["hv-note"])
            with gr.Row():
                buttons = [gr.Button(step.title, size="sm", elem_id=f"hv-lesson-{i + 1}")
                           for i, step in enumerate(STEPS)]
            note = gr.Markdown(elem_id="hv-lesson-note", latex_delimiters=[])
        return cls(note, buttons)


class Lesson:
    """The steps' callbacks, on the controller's layout and app."""

    def __init__(self, controller: Controller, panel: LessonPanel):
        self.ctl = controller
        self.panel = panel
        self.example = next((e for e in controller.app.examples if e.path.name == EXAMPLE_FILE), None)

    @property
    def available(self) -> bool:
        return self.example is not None and TOY_KEY in self.ctl.app.policy.allowed

    def say(self, index: int, extra: str = "") -> str:
        """The step's sentence for the lesson box, also shown as a toast where the page scrolls to."""
        step = STEPS[index]
        gr.Info(f"{step.title}: {step.sentence}", duration=12, title="Lesson")
        text = f"**{markdown_text(step.title)}.** {markdown_text(step.sentence)}"
        return text + (f"  \n{extra}" if extra else "")

    def inputs_for(self, index: int, methods: list[str]) -> dict:
        ui = self.ctl.ui
        return {ui.image: str(self.example.path), ui.model: TOY_KEY, ui.prompt: DEFAULT_PROMPT,
                ui.max_tokens: LESSON_TOKENS, ui.methods: methods, self.panel.note: self.say(index)}

    def see_the_fork(self) -> dict:
        return self.inputs_for(0, ["vanilla"])

    def remove_the_sink(self) -> dict:
        return self.inputs_for(2, ["vanilla", "remove_sink"])

    def _greedy(self, runs):
        """The Greedy column of the last comparison on the lesson's scene, and the step naming the fork."""
        entry = (runs or {}).get("vanilla")
        if entry is None or entry.trace.meta.get("image_digest") != self.example.digest:
            return None, None
        return entry, step_naming(entry.trace, PARTNER)

    def sink_at_the_fork(self, runs) -> dict:
        entry, step = self._greedy(runs)
        if entry is None:
            return {self.panel.note: self.say(1, "⚠ First do step 1: press ▶ Compare with Greedy on the knife scene.")}
        if step is None:
            return {self.panel.note: self.say(1, "⚠ Greedy did not name a fork on this run, so there is no fork "
                                                 "step to open; the panel shows its first step.")}
        return {**self.ctl.ui.panel.show(runs, entry.key, step),
                self.panel.note: self.say(1, markdown_text(sink_sentence(entry.trace, step)))}

    def hide_the_knife(self, runs) -> dict:
        entry, step = self._greedy(runs)
        if entry is None or entry.source is None:
            return {self.panel.note: self.say(3, "⚠ First press ▶ Compare with Greedy on the knife scene (step 1 or 3).")}
        patches = patches_covering(entry.trace, entry.source, TRIGGER)
        if not patches:
            return {self.panel.note: self.say(3, "⚠ The knife could not be found in this picture.")}
        panel, step = self.ctl.ui.panel, step or 0
        chosen = Selection(patches=patches)
        updates = panel.show(runs, entry.key, step)
        updates.update({panel.whatif.selection: chosen,
                        **panel.whatif_view(runs, entry.key, step, "mean", "mean", chosen)})
        return {**updates, self.panel.note: self.say(3, f"{len(patches)} patches cover the knife.")}

    def wire(self) -> None:
        ui, private = self.ctl.ui, dict(api_visibility="private", show_progress="hidden")
        inputs = [ui.image, ui.model, ui.prompt, ui.max_tokens, ui.methods, self.panel.note]
        debugger = [self.panel.note, *ui.panel.trace_outputs]
        wiring = ((self.see_the_fork, [], inputs), (self.sink_at_the_fork, [ui.runs], debugger),
                  (self.remove_the_sink, [], inputs), (self.hide_the_knife, [ui.runs], debugger))
        for button, step, (callback, given, changed) in zip(self.panel.buttons, STEPS, wiring):
            button.click(user_errors(callback), inputs=given, outputs=changed, **private) \
                .then(None, js=scroll_to(step.target), **private)
