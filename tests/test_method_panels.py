"""Method panels are data: the debugger draws whatever halviz.viz.panels registers, so a new method's
panel is its own module plus one registry entry."""

import plotly.graph_objects as go

from halviz.methods import REGISTRY
from halviz.viz.panels import PANEL_MODULES, PANELS, Figure, MethodPanel, panel_for


def test_every_registered_panel_belongs_to_a_method_and_has_unique_element_ids():
    assert [p.method for p in PANELS] == list(PANEL_MODULES)
    assert all(p.method in REGISTRY for p in PANELS)
    ids = [f.elem_id for p in PANELS for f in p.figures]
    assert len(ids) == len(set(ids)) and all(i.startswith("hv-") for i in ids)
    assert panel_for("vhr") is PANELS[PANEL_MODULES.index("vhr")] and panel_for("vanilla") is None


def test_a_new_panel_is_drawn_by_the_debugger_without_touching_it(monkeypatch, toy):
    import gradio as gr

    from halviz.engine.decode import Decoder
    from halviz.session.state import RunEntry
    from halviz.ui import debugger
    from PIL import Image

    drawn = []

    def per_step(trace, step):
        drawn.append(step)
        return go.Figure(layout=dict(title=f"new method at step {step}", height=300))

    panel = MethodPanel("newmethod", "A new method", (
        Figure("hv-new-once", lambda trace, step: go.Figure(layout=dict(height=200)), per_step=False),
        Figure("hv-new-step", per_step, row=1, help="how to read it")),
        help="the panel's help", present=lambda trace: trace.num_steps > 0)
    monkeypatch.setattr(debugger, "PANELS", (*PANELS, panel))
    with gr.Blocks():
        built = debugger.DebuggerPanel.build()
    box = built.method_box("newmethod")
    trace = Decoder(toy, Image.new("RGB", (96, 96), "gray"), "Describe.", [], 3).run_to_end()
    runs = {"vanilla": RunEntry("vanilla", "Greedy", trace, None, None)}
    shown = built.show(runs, "vanilla", 1)
    assert shown[box.box].visible is True and shown[box.plot("hv-new-once")].visible is True
    assert "new method at step 1" in str(shown[box.plot("hv-new-step")].value)
    later = built.at_step(runs, "vanilla", 2, "mean", "mean")
    assert "new method at step 2" in str(later[box.plot("hv-new-step")].value)
    assert box.plot("hv-new-step") in built.step_outputs and box.box in built.trace_outputs
