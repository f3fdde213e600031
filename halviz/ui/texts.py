"""The words on the page: header, panel explanations, captions' legend."""

from __future__ import annotations

NOT_WHY = "Attention shows where the model looked, not why it answered."

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
              + NOT_WHY),
    "candidates": ("The five most likely next tokens after every method acted, with their probabilities; greedy "
                   "decoding takes the first (blue). The title gives its margin over the runner-up at this step: a "
                   "small margin is a close call that a method could tip, a large one a confident choice. Confident "
                   "is not the same as correct: check the caption's marks."),
    "prunehal": ("A layer votes when its attention to the kept image tokens falls below √r × its running mean; "
                 "a majority (or the forced step) prunes the least-attended image tokens, but only while the "
                 "budget of t prunes (the forced one included) lasts. The title says when it ran out: majorities "
                 "after that step prune nothing. " + NOT_WHY),
    "vasparse": ("Heatmap: at every step each head keeps the generated tokens that score highest on (q·K)² plus "
                 "λ × how much they looked at the image; the rest are merged by DPC-KNN clustering (knob "
                 "aggregate) or masked. Image and prompt tokens are never dropped. ℓ_θ are the logits with this "
                 "sparse attention; ℓ_φ is a language prior: by default (knob phi = embedding) the language "
                 "head applied to the current token's embedding, with no decoder pass. Tokens that stay likely "
                 "under ℓ_φ are pushed down. Bars below: the sink weight W of every position, which the penalty "
                 "uses to damp attention to sinks. " + NOT_WHY),
    "vhr": ("Each cell is one head: how much its output changes when the image is removed from the prompt "
            "(hover for the value). VHR chooses heads only in the layers its rule names (the title lists them); "
            "grey rows are measured but never reinforced. In its layers it multiplies the outlined heads by α: "
            "those above their layer's median VHD once outliers are zeroed, so a layer whose heads all barely "
            "react still gets half of them reinforced. A high VHD says a head reacts to the image, not that it "
            "is right."),
    "var_sinks": ("Each row is one layer, each column one prompt token. A coloured cell is a token VAR counts as a "
                  "sink in that layer: its hidden state entering the layer (RMS-normalised) has a massive value in "
                  "one of the dimensions where the first token is massive. Purple = BOS, blue = an image token (a "
                  "visual sink), orange = other text. Grey rows are layers VAR leaves alone. Sinks are found from "
                  "activations, not from attention: a row with no visual sink means no head in that layer is "
                  "changed."),
    "var_heads": ("Each cell is one head at this step. Outlined (blue) heads are image-centric: they give the "
                  "image at least the floor of their attention, and at least ρ of that goes to image tokens that "
                  "are not sinks. Only these heads are changed, and only in layers that have a visual sink. "
                  + NOT_WHY),
    "var_moved": ("Each bar is one image-centric head at this step: the share of the query's attention (0–1) that "
                  "VAR took from the sink tokens (BOS included) and gave to the other image tokens, in proportion "
                  "to what they already had. It is p times the sinks' weight in that head's row. " + NOT_WHY),
}

CAPTION_COLOURS = {"correct": "#16a34a", "hallucinated": "#dc2626", "unverified": "#ca8a04",
                   "over-counted": "#ea580c", "in loop": "#9ca3af",
                   "this step": "#2563eb", "first change": "#7c3aed"}


API_NOTE = ("The same comparison is available as the API endpoint `/compare` "
            "(see “Use via API” at the bottom of the page).")
