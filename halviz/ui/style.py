"""Theme and CSS (Gradio 6 takes both in ``launch()``)."""

from __future__ import annotations

import gradio as gr

SYSTEM_FONTS = ["Inter", "ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif"]
MONO_FONTS = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"]


def theme() -> gr.themes.Base:
    # System fonts only: a Google font would be fetched from the network on every page load.
    return gr.themes.Soft(primary_hue="indigo", secondary_hue="sky", neutral_hue="slate",
                          font=SYSTEM_FONTS, font_mono=MONO_FONTS, radius_size="md").set(
        button_primary_background_fill="*primary_600", button_primary_background_fill_hover="*primary_700",
        button_primary_text_color="white")


CSS = """
.gradio-container { max-width: 1480px !important; }
.hv-header { padding: 6px 2px 2px 2px; }
.hv-title { font-size: 26px; font-weight: 750; letter-spacing: -0.01em; }
.hv-title span { font-weight: 450; color: var(--body-text-color-subdued); font-size: 17px; }
.hv-sub { margin-top: 4px; color: var(--body-text-color-subdued); font-size: 14px; max-width: 1050px; }
.hv-ok { color: #15803d; } .hv-bad { color: #b91c1c; } .hv-unk { color: #a16207; }
.hv-note, .hv-note p { font-size: 13px !important; color: var(--body-text-color-subdued); }
.hv-ref { font-style: italic; }
.hv-help { font-size: 12.5px; line-height: 1.4; color: var(--body-text-color-subdued);
           border-left: 3px solid #c7d2fe; padding: 2px 0 2px 8px; margin: -4px 0 8px 0; }
.hv-section h2 { margin: 18px 0 0 0 !important; }
.hv-subsection h3 { margin: 10px 0 0 0 !important; font-size: 16px !important; }
.hv-card { border: 1px solid var(--border-color-primary); border-radius: 10px; padding: 8px 10px !important;
           background: var(--background-fill-primary); box-shadow: 0 1px 2px rgba(15,23,42,0.05); }
.hv-card-title h3 { margin: 0 !important; font-size: 17px !important; }
.hv-card-title p { margin: 0 !important; font-size: 12px !important; color: var(--body-text-color-subdued); }
.hv-caption .textfield, .hv-caption .textspan { font-size: 15.5px !important; line-height: 1.75 !important; }
/* One span per token: lines may break only at a space inside a token's own text ("three" split into
   "thr" + "ee" stays whole), and the template's whitespace between token spans takes no room. */
/* Gradio lays the tokens out as flex items (any two may part) with word-break: break-all; laid out
   inline instead, the only break opportunities are the spaces inside the tokens' own text. */
.hv-caption .textfield { display: block !important; white-space: nowrap; word-break: normal !important; }
.hv-caption .token-container { display: inline !important; }
.hv-caption .token-container { white-space: nowrap; font-size: 0 !important; }
.hv-caption .token { white-space: nowrap; font-size: 15.5px !important; }
.hv-caption .token .text { white-space: pre-wrap; word-break: normal !important; font-size: 15.5px !important; }
.hv-caption .token.highlighted .text { white-space: nowrap; }  /* a marked word: its chip stays whole */
.hv-summary p { font-size: 12.5px !important; margin: 0 !important; }
.hv-status p { font-size: 14px !important; margin: 4px 0 !important; }
.hv-trace-info p { font-size: 12.5px !important; line-height: 1.45 !important; }
.hv-step-info p { font-size: 13.5px !important; margin: 2px 0 !important; }
#hv-image img { object-fit: contain; }
/* Examples: a compact table, each picture beside its name. */
#hv-examples td { padding: 2px 8px !important; text-align: left !important; }
#hv-examples td img { max-height: 40px !important; width: auto !important; }
#hv-examples td .container { height: 44px !important; width: 44px !important; }
footer { opacity: 0.75; }
"""

# Gradio lets plotly autosize every figure to its container, which forgets the figure's own height;
# a height class per figure (see ``sized_plot``) pins the container instead, in 20 px steps.
PLOT_HEIGHTS = range(160, 1201, 20)
CSS += "\n".join(f".hv-h{h} .js-plotly-plot {{ height: {h}px !important; }}" for h in PLOT_HEIGHTS)


def sized_plot(figure) -> gr.Plot:
    """A Plot update whose container keeps the figure's own height (hidden when there is no figure)."""
    if figure is None:
        return gr.Plot(value=None, visible=False)
    return gr.Plot(value=figure, elem_classes=[height_class(figure.layout.height)], visible=True)


def height_class(height: float | None) -> str:
    """The CSS class that pins a plot's container to ``height`` (rounded up to 20 px)."""
    pixels = int(height or 450)
    pixels = min(max(pixels + (-pixels) % 20, PLOT_HEIGHTS.start), PLOT_HEIGHTS.stop - 1)
    return f"hv-h{pixels}"
