# %% [markdown]
# # halviz quickstart
#
# `quickstart.ipynb` and `quickstart.py` hold the same cells (`tests/test_quickstart.py` runs the
# script and checks that the two agree). This compares greedy decoding with VCD on the bundled toy LLaVA's "knife
# without fork" scene, where the toy model has learnt to add a fork that is not there, draws two
# debugger panels of the step that names the fork, and exports one of them.

# %%
import os
from pathlib import Path

import halviz

KNIFE = halviz.EXAMPLES_DIR / "toy-knife-no-fork.png"  # the examples ship inside the package
OUT = Path(os.environ.get("HALVIZ_QUICKSTART_OUT", "quickstart-output"))

# %% [markdown]
# One call decodes both methods as rows of one batch and labels every object mention against the
# picture's own ground truth (the toy scene's exact objects): the same captions and labels as the
# app's Compare button.

# %%
comparison = halviz.compare(KNIFE, methods=["vanilla", "vcd"], max_new_tokens=24)
comparison

# %%
for name, column in comparison.items():
    print(f"{column.title:7} {column.caption.strip()!r}")
    print(f"        correct {column.correct}, hallucinated {column.hallucinated}, {column.finish_reason}")

# %% [markdown]
# Each column carries its trace, and every debugger panel is a function of a trace. Find the step
# whose token is the first hallucinated object, then look at where that step's attention went: on the
# image (patch by patch) and over the parts of the sequence (BOS, image, prompt, generated text).

# %%
column = comparison["vanilla"]
trace = column.trace
invented = column.hallucinated[0] if column.hallucinated else column.caption.split()[-1]
step = next((i for i, text in enumerate(trace.texts) if invented in text), trace.num_steps - 1)
print(f"step {step}: {trace.texts[step]!r}")
overlay = halviz.viz.attention_overlay(trace, step=step, layer="mean", head="mean", image=comparison.image)
overlay

# %%
shares = halviz.viz.segment_share_figure(trace, step=step, layer="mean")
shares

# %% [markdown]
# Figures export to PNG, SVG or PDF (by the suffix; this needs a Chrome or Chromium on the machine),
# and the traces save as the app's downloads, which the app's "Open a trace" can replay.

# %%
OUT.mkdir(parents=True, exist_ok=True)
try:
    print("wrote", halviz.export(overlay, OUT / "fork-attention.png", scale=2))
except halviz.ExportError as error:
    print("no export:", error)
saved = comparison.save(OUT / "traces")
print("saved", [p.name for p in saved])
print("reloaded", halviz.load_trace(saved[0]).caption.strip())
