"""The words on the page: header, panel explanations, captions' legend."""

from __future__ import annotations

from halviz.viz.common import NOT_WHY
from halviz.viz.panels import PANELS

HEADER = """
<div class="hv-header">
  <div class="hv-title">halviz <span>· a visual debugger for hallucination in multimodal LLMs</span></div>
  <div class="hv-sub">Run decoding methods side by side on one image, watch the captions stream with object
  mentions marked <b class="hv-ok">correct</b>, <b class="hv-bad">hallucinated</b> or <b class="hv-unk">unverified</b>,
  then click any word to open the model up at the step that produced it.</div>
</div>
"""

DEBUGGER_INTRO = (
    "Everything below is drawn from the **recorded trace** of the chosen column; no model runs. "
    "**Step i** is the attention of the query that *predicts* generated token i. Click a word in a caption "
    "or move the step slider."
)

# Every HELP entry is shown inside an HTML <div> (halviz.ui.debugger.help_text), where Markdown is not
# read: emphasis is written as <b>…</b>, never **…**.
HELP = {
    "overlay": ("Each cell is one image token (a patch of your picture); the colour is how much attention the "
                "query predicting this step's token paid to it, averaged as the title says. Models that cut the "
                "picture into tiles plus a global view offer a <b>View</b> picker: one grid, or the tiles where they "
                "sit in the upload with the other views beside, on one colour scale. " + NOT_WHY),
    "mask": ("Dark patches were removed from attention by the method at this step, clear ones kept (a "
             "first-edition VASparse trace shows the share of heads and layers that kept each one). " + NOT_WHY),
    "entropy": ("Entropy of one attention row: low means concentrated on a few tokens, high means spread out. "
                "KVSmooth smooths a new token's keys and values more (λ) when its entropy ranks high. " + NOT_WHY),
    "sinks": ("Each bar splits one layer's attention over BOS, system text, image, prompt and generated tokens; "
              "the grid names the single tokens taking most. A sink takes a large share while carrying little "
              "content. On the bundled toy model the BOS sink is <b>designed</b>, not learned: built into its "
              "weights (a massive activation on BOS that half the heads of layer 2 and every head of layers "
              "3–5 read through a fixed key and query bias), because none grew in its short training; real "
              "models grow theirs in training. The other heads of layer 2 have no sink and read the image. "
              "Which tokens are sinks is read from their activations, not their attention (VAR's rule: a massive "
              "value, after RMSNorm, in a dimension where BOS has one): outlined in the grid, orange for a "
              "<b>visual sink</b> (an image token that became a sink, as in VAR and LSG), purple for BOS or "
              "another text sink; the bars split off the image attention that went to visual sinks. The toy has "
              "no visual sink by design: its massive dimension belongs to BOS alone. " + NOT_WHY),
    "candidates": ("The five most likely next tokens after every method acted, with their probabilities; greedy "
                   "decoding takes the first (blue). The title gives its margin over the runner-up at this step: a "
                   "small margin is a close call that a method could tip, a large one a confident choice. Confident "
                   "is not the same as correct: check the caption's marks."),
}
# Each method panel's own help, by the keys the figures and tests use: the panel's (its method name) and
# each figure's that has one (its element id without "hv-", dashes as underscores: "var_sinks").
HELP.update({p.method: p.help for p in PANELS if p.help})
HELP.update({f.elem_id.removeprefix("hv-").replace("-", "_"): f.help for p in PANELS for f in p.figures if f.help})

CAPTION_COLOURS = {"correct": "#16a34a", "hallucinated": "#dc2626", "unverified": "#ca8a04",
                   "over-counted": "#ea580c", "in loop": "#9ca3af",
                   "this step": "#2563eb", "first change": "#7c3aed"}


API_NOTE = ("The same comparison is available as the API endpoint `/compare` "
            "(see “Use via API” at the bottom of the page).")
