"""``halviz.eval --preset``: each paper's setting parses, explicit flags win, and the system message
reaches the prompt the model reads."""

import json

import pytest

from halviz import eval as heval
from halviz.eval_presets import DETAIL_PROMPT, HELP_PROMPT, PRESETS, VICUNA_SYSTEM


def test_each_paper_has_a_preset_with_sourced_values():
    assert set(PRESETS) == {"vhr", "vasparse", "kvsmooth", "prunehal"}
    for preset in PRESETS.values():
        assert preset.flags["methods"].value == f"vanilla,{preset.name}"
        for setting in preset.flags.values():
            assert setting.source.strip()


@pytest.mark.parametrize("name,n,tokens,prompt,system,seed", [
    ("vhr", 500, 512, DETAIL_PROMPT, None, 0),
    ("vasparse", 500, 64, DETAIL_PROMPT, VICUNA_SYSTEM, 1),
    ("kvsmooth", 500, 512, HELP_PROMPT, None, 0),
    ("prunehal", 500, 512, DETAIL_PROMPT, None, 0),
])
def test_presets_parse(name, n, tokens, prompt, system, seed):
    args = heval.parse_args(["--preset", name])
    assert (args.n, args.max_new_tokens, args.prompt, args.system, args.seed) == (n, tokens, prompt, system, seed)
    assert args.methods == f"vanilla,{name}" and args.preset == name


def test_explicit_flags_override_a_preset_wherever_they_stand():
    args = heval.parse_args(["--n", "3", "--preset", "vasparse", "--max-new-tokens", "4", "--system", "Be brief.",
                             "--methods", "vanilla"])
    assert (args.n, args.max_new_tokens, args.system, args.methods) == (3, 4, "Be brief.", "vanilla")
    assert args.seed == 1 and args.prompt == DETAIL_PROMPT  # the rest still comes from the preset
    plain = heval.parse_args([])
    assert plain.n == 200 and plain.max_new_tokens == 64 and plain.system is None and plain.preset is None


def test_unknown_preset_is_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        heval.parse_args(["--preset", "opera"])
    assert exc.value.code == 2 and "opera" in capsys.readouterr().err


def test_list_presets_prints_every_value(capsys):
    assert heval.main(["--list-presets"]) == 0
    out = capsys.readouterr().out
    for name, preset in PRESETS.items():
        for dest in preset.flags:
            assert f"| {name} | --{dest.replace('_', '-')} |" in out
    assert VICUNA_SYSTEM in out


def test_system_message_reaches_the_prompt(tiny_models):
    adapter = tiny_models["llava-1.5"].adapter
    tok = adapter.processor.tokenizer
    plain = adapter.chat_text("Describe.")
    with_system = adapter.chat_text("Describe.", VICUNA_SYSTEM)
    bos = tok.bos_token or ""
    head = bos if bos and plain.startswith(bos) else ""  # the real template leaves <s> to the tokenizer
    assert with_system == f"{head}{VICUNA_SYSTEM} {plain[len(head):]}"  # LLaVA-1.5's "SYSTEM USER: ..." layout
    assert tok(with_system)["input_ids"][0] == tok.bos_token_id


def test_a_preset_run_records_its_setting(tiny_model_dirs, tmp_path):
    out = tmp_path / "eval.json"
    code = heval.main(["--preset", "vasparse", "--model", str(tiny_model_dirs["llava-1.5"]), "--methods", "vanilla",
                       "--n", "2", "--max-new-tokens", "3", "--json", str(out), "--no-progress"])
    assert code == 0
    config = json.loads(out.read_text())["config"]
    assert config["preset"] == "vasparse" and config["system"] == VICUNA_SYSTEM and config["seed"] == 1
    assert config["n"] == 2 and config["max_new_tokens"] == 3
