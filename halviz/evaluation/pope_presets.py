"""Each paper's POPE setting as named ``halviz.eval`` flags, every value with its source.

``python -m halviz.eval --preset pope-llava|pope-vcd|pope-halc`` (beside the CHAIR presets of
:mod:`halviz.eval_presets`). ``guess`` marks values that were not read in the released code in this
session. halviz decodes greedily: where a paper *samples* (VCD), the preset says so and stays greedy.
"""

from __future__ import annotations

from halviz.eval_presets import VICUNA_SYSTEM, Preset, Setting
from halviz.evaluation.pope import TEMPLATE

HALC_TEMPLATE = "Find evidence first and then answer: is there a {} in the image?"

POPE_PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("pope-llava", "Liu et al., LLaVA-1.5 (CVPR 2024): scripts/v1_5/eval/pope.sh", {
        "benchmarks": Setting("pope", "LLaVA's POPE evaluation"),
        "methods": Setting("vanilla", "greedy baseline (temperature 0)"),
        "pope_template": Setting(TEMPLATE, "POPE's released question files"),
        "pope_suffix": Setting("\nAnswer the question using a single word or phrase.",
                               "LLaVA's llava_pope_test.jsonl appends it after a newline (from evaluation.md; "
                               "the file was not read in this session)", guess=True),
        "pope_max_new_tokens": Setting(128, "model_vqa_loader.py default --max_new_tokens 128 (not read here)",
                                       guess=True),
        "system": Setting(VICUNA_SYSTEM, "conv-mode vicuna_v1's system message (not read here)", guess=True),
        "pope_parser": Setting("official", "LLaVA's eval_pope.py is the official script's copy"),
        "pope_n": Setting(500, "POPE: 500 images, 3,000 questions per split"),
    }, ("LLaVA-1.5 reports the mean F1 of the three splits (87.2 / 86.3 / 84.5 -> 86.0)",
        "LLaVA-1.5 was scored on an older POPE release whose random split holds 2,910 questions: "
        "bring those files with --pope-questions to compare with its table")),
    Preset("pope-vcd", "Leng et al., VCD, CVPR 2024 (DAMO-NLP-SG/VCD, experiments/eval/)", {
        "benchmarks": Setting("pope", "VCD's POPE table"),
        "methods": Setting("vanilla,vcd", "the paper compares regular decoding with VCD"),
        "pope_template": Setting(TEMPLATE, "the released question files VCD ships"),
        "pope_suffix": Setting(" Please answer this question with one word.",
                               "read: object_hallucination_vqa_llava.py appends it to the question"),
        "pope_max_new_tokens": Setting(1024, "read: object_hallucination_vqa_llava.py max_new_tokens=1024"),
        "system": Setting(VICUNA_SYSTEM, "conv_templates[args.conv_mode], llava_v1 (default not read here)",
                          guess=True),
        "pope_parser": Setting("vcd", "read: experiments/eval/eval_pope.py (substring, label-dependent)"),
        "pope_n": Setting(500, "the released POPE files"),
    }, ("VCD SAMPLES: do_sample=True, temperature 1, top_p 1, seed 42 in the script's default (55 in "
        "cd_scripts/llava1.5_pope.bash); halviz decodes greedily, so its 'vcd' row is VCD's greedy reading",
        "VCD's knobs: cd_alpha 1, cd_beta 0.1 (code default; the bash script passes 0.2), noise_step 500: "
        "halviz's vcd defaults are alpha 1, beta 0.1, t 500",
        "'The Mirage of Performance Gains' (arXiv 2504.10020): compare against the greedy row and read the yes-ratio")),
    Preset("pope-halc", "HALC (ICML 2024) / VASparse (CVPR 2025) POPE setting", {
        "benchmarks": Setting("pope", "their POPE tables"),
        "methods": Setting("vanilla,vasparse", "VASparse's comparison with greedy"),
        "pope_template": Setting(HALC_TEMPLATE, "evaluation.md: 'Find evidence first and then answer: …' "
                                 "(code not read in this session)", guess=True),
        "pope_suffix": Setting("", "none beyond the template", guess=True),
        "pope_max_new_tokens": Setting(16, "evaluation.md: 16 new tokens (code not read in this session)", guess=True),
        "system": Setting(VICUNA_SYSTEM, "VASparse's eval_configs/llava-1.5_eval.yaml system_message (as the CHAIR "
                          "preset)", guess=True),
        "pope_parser": Setting("halc", "evaluation.md: No/not/no/NO or a word ending in n't (code not read)",
                               guess=True),
        "pope_n": Setting(500, "the released POPE files"),
    }, ("the template only applies when halviz builds the splits; released files carry their own text",)),
)}
