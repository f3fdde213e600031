"""Each paper's CHAIR setting as a named set of ``halviz.eval`` flags, every value with its source.

``python -m halviz.eval --preset NAME`` fills in these flags; any flag given explicitly wins, and
``--param`` values given explicitly are applied after the preset's. ``guess`` marks values the
paper and its released code do not state (or that we could not read offline): check them before
quoting a number as the paper's setting. Decoding is greedy in every preset (halviz decodes greedily).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DETAIL_PROMPT = "Please describe this image in detail."
HELP_PROMPT = "Please help me describe the image in detail."
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")


@dataclass(frozen=True)
class Setting:
    value: Any
    source: str
    guess: bool = False


@dataclass(frozen=True)
class Preset:
    name: str
    paper: str
    flags: dict[str, Setting]  # argparse destinations of halviz.eval
    notes: tuple[str, ...] = field(default=())

    def defaults(self) -> dict[str, Any]:
        return {dest: s.value for dest, s in self.flags.items()}


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("vhr", "He et al., VHR, ACL 2025 (arXiv 2412.13949)", {
        "methods": Setting("vanilla,vhr", "the paper's table compares greedy with VHR"),
        "n": Setting(500, "paper: CHAIR on 500 COCO val2014 images"),
        "max_new_tokens": Setting(512, "paper: max 512 new tokens"),
        "prompt": Setting(DETAIL_PROMPT, "paper / methods.md §4"),
        "system": Setting(None, "not stated; the checkpoint's chat template without a system message", guess=True),
        "seed": Setting(0, "not stated (which 500 images)", guess=True),
    }, ("greedy decoding (issue 11, the paper's greedy row)",)),
    Preset("vasparse", "Zhuang et al., VASparse, CVPR 2025 (arXiv 2501.06553)", {
        "methods": Setting("vanilla,vasparse", "the paper's table compares greedy with VASparse"),
        "n": Setting(500, "released README: 500 images randomly sampled from COCO 2014 val; --num_samples 500"),
        "seed": Setting(1, "released README command: --seed 1"),
        "max_new_tokens": Setting(64, "released README command: --max_new_tokens 64"),
        "prompt": Setting(DETAIL_PROMPT, "released run_scripts/caption_generation_patch_vasparse.py"),
        "system": Setting(VICUNA_SYSTEM, "released eval_configs/llava-1.5_eval.yaml system_message"),
    }, ("greedy: the README command passes no --sample and beam 1",
        "the released code samples with random.sample over COCO ids after seeding; halviz shuffles the folder's "
        "annotated files with random.Random(seed), so the 500 images differ from theirs",
        "the released code glues the system message to 'USER: <image> prompt ASSISTANT:' without a space; halviz "
        "uses the checkpoint's chat template with a system turn (or the text and a space before the first turn)",
        "VASparse knobs keep the README defaults: sparse_kv_cache_rate 0.9 = keep_ratio, contrastive_rate 0.1 = "
        "alpha, mask_rate 0.5")),
    Preset("kvsmooth", "Jiang et al., KVSmooth, CVPR 2026 (arXiv 2602.04268)", {
        "methods": Setting("vanilla,kvsmooth", "the paper's table compares greedy with KVSmooth"),
        "n": Setting(500, "not read offline; 500 COCO val2014 images as in the PAI/OPERA lineage", guess=True),
        "max_new_tokens": Setting(512, "issue 11 / methods.md: 512 new tokens"),
        "prompt": Setting(HELP_PROMPT, "methods.md: the PAI lineage's prompt, 'likely KVSmooth'", guess=True),
        "system": Setting(None, "not stated", guess=True),
        "seed": Setting(0, "not stated", guess=True),
    }, ("greedy decoding",)),
    Preset("prunehal", "Sun et al., PruneHal, arXiv 2510.19183", {
        "methods": Setting("vanilla,prunehal", "the paper's table compares greedy with PruneHal"),
        "n": Setting(500, "not read offline; the usual 500 COCO val2014 images", guess=True),
        "max_new_tokens": Setting(512, "not read offline; the long-caption CHAIR setting", guess=True),
        "prompt": Setting(DETAIL_PROMPT, "not read offline; the common CHAIR prompt", guess=True),
        "system": Setting(None, "not stated", guess=True),
        "seed": Setting(0, "not stated", guess=True),
    }, ("greedy decoding (the paper also stacks PruneHal on other decoders)",
        "no public code; every value but the method is a guess until checked against the paper")),
)}


def preset_table(presets: dict[str, Preset] | None = None) -> str:
    """Markdown table of every preset value, its source and whether it is a guess."""
    lines = ["| preset | flag | value | source | guess |", "|---|---|---|---|---|"]
    for preset in (presets or PRESETS).values():
        for dest, s in preset.flags.items():
            value = "(none)" if s.value is None else str(s.value).replace("\n", "\\n")
            lines.append(f"| {preset.name} | --{dest.replace('_', '-')} | {value} | {s.source} | "
                         f"{'yes' if s.guess else 'no'} |")
    return "\n".join(lines)
