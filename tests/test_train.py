"""The staged toy recipe: runs end to end in seconds, resumes exactly, probes the sink from eager
attention; the toy-scene detector tells glyph scenes from photos."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from halviz.engine.decode import Decoder
from halviz.models import load_model
from halviz.toy import scenes
from halviz.toy.model import ToyModelConfig
from halviz.toy.recipe.sink_probe import bos_attention, summarise
from halviz.toy.recipe.train import STAGES, TrainConfig, train
from halviz.toy.recipe.vision_pretrain import DECORRELATED, patch_labels

EXAMPLES = Path(__file__).resolve().parents[1] / "halviz" / "assets" / "examples"
TINY = ToyModelConfig(vision_hidden=32, vision_layers=1, vision_heads=2, text_hidden=32, text_layers=3,
                      text_heads=2, intermediate=64)
STEPS = TrainConfig(vision_steps=3, vision_batch=4, text_steps=4, text_batch=2, text_len=32, align_steps=2,
                    align_batch=2, multi_steps=3, multi_batch=2, warmup=1, probe_every=2, ckpt_every=100,
                    tokenizer_scenes=50, caption_pool=50,
                    designed_sink_heads="1")  # half of TINY's layer-2 heads carry the sink, as in the shipped model


def _train(tmp_path: Path, name: str, **kw):
    torch.set_num_threads(1)
    return train(tmp_path / name, STEPS, TINY, threads=1, log_every=1, ckpt=tmp_path / f"{name}-ckpt", **kw)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """One uninterrupted run of STEPS, shared: (its info, its folder, its checkpoint folder). The tests
    only read it (the training is deterministic, so every test used to repeat this same run)."""
    root = tmp_path_factory.mktemp("train")
    info = _train(root, "base")
    return info, root / "base", root / "base-ckpt"


def test_staged_training_smoke(base):
    info, folder, _ = base
    stages = [row["stage"] for row in info["history"]]
    assert sorted(set(stages), key=STAGES.index) == list(STAGES)
    losses = [row["loss"] for row in info["history"] if "loss" in row]
    assert all(np.isfinite(losses))
    probes = [row for row in info["history"] if row.get("probe") == "sink"]
    assert {p["stage"] for p in probes} == {"text", "align", "multi"}
    assert set(info["stage_seconds"]) == set(STAGES) and info["seconds"] > 0
    loaded = load_model(str(folder))
    trace = Decoder(loaded, scenes.heldout(1)[0].image, max_new_tokens=3).run_to_end()
    assert trace.meta["grid"] == [12, 12] and trace.num_steps >= 1
    # BOS is the only token before the image in the chat layout
    ids = loaded.processor(text=loaded.adapter.chat_text("Describe the image."), images=scenes.heldout(1)[0].image,
                           return_tensors="pt")["input_ids"][0]
    assert ids[0] == loaded.processor.tokenizer.bos_token_id and ids[1] == loaded.adapter.image_token_id


def test_interrupted_training_resumes_to_the_same_weights(base, tmp_path):
    _, straight, _ = base
    assert _train(tmp_path, "split", max_steps=5) is None  # stops inside the text stage
    assert _train(tmp_path, "split", resume=True, max_steps=4) is None  # stops at a stage boundary
    info = _train(tmp_path, "split", resume=True)
    assert info is not None
    a, b = load_file(straight / "model.safetensors"), load_file(tmp_path / "split" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_sink_probe_matches_hand_computed_attention():
    """bos_attention against the softmax of q·k computed by hand from the layer's own weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=2, vocab_size=20, max_position_embeddings=32, attn_implementation="sdpa")
    model = LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 20, (2, 7))
    query_mask = torch.zeros(2, 7, dtype=torch.bool)
    query_mask[:, 3:] = True
    got = bos_attention(model, {"input_ids": ids}, query_mask)
    assert model.config._attn_implementation == "sdpa"  # restored
    layer = model.model.layers[0]
    with torch.no_grad():
        h = layer.input_layernorm(model.model.embed_tokens(ids))
        q = layer.self_attn.q_proj(h).view(2, 7, 2, 8).transpose(1, 2)
        k = layer.self_attn.k_proj(h).view(2, 7, 2, 8).transpose(1, 2)
        cos, sin = model.model.rotary_emb(h, torch.arange(7)[None])
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        scores = q @ k.transpose(-1, -2) / 8 ** 0.5
        scores = scores.masked_fill(torch.triu(torch.ones(7, 7, dtype=torch.bool), 1), float("-inf"))
        to_bos = scores.softmax(-1)[..., 0]  # (batch, heads, q)
    expected = to_bos[:, :, 3:].mean((0, 2))
    torch.testing.assert_close(got[0], expected, rtol=1e-5, atol=1e-6)
    s = summarise(torch.tensor([[0.9, 0.1], [0.2, 0.31], [0.5, 0.6]]), early=1)
    assert s["sink_early"] == 0.5 and s["sink_late"] == 0.75


def test_patch_labels_follow_the_drawn_pixels():
    scene = scenes.generate_scene(3, DECORRELATED, apply_prior=False)
    labels = patch_labels(scene, 8).reshape(12, 12)
    pixels = np.asarray(scene.image)
    for obj in scene.objects:
        cls = scenes.CLASS_NAMES.index(obj.name) + 1
        drawn = np.all(pixels == np.array(obj.rgb, dtype=np.uint8), axis=-1).reshape(12, 8, 12, 8).sum((1, 3))
        assert (labels[drawn >= 32] == cls).all()  # a patch mostly covered by the glyph carries its class
        assert not (labels[drawn == 0] == cls).any()
    assert (labels == 0).mean() > 0.5


def test_decorrelated_world_keeps_the_default_stream():
    a, b = scenes.generate_scene(11), scenes.generate_scene(11, scenes.WorldConfig(faint_any_rate=0.0))
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    faint = [o.faint for s in range(40) for o in scenes.generate_scene(s, DECORRELATED, apply_prior=False).objects]
    assert 0.05 < np.mean(faint) < 0.4


@pytest.mark.parametrize("name", ["toy-scene.png", "toy-cup-no-spoon.png", "toy-knife-no-fork.png", "toy-boat-no-bird.png"])
def test_toy_examples_look_like_toy_scenes(name):
    assert scenes.looks_like_toy_scene(Image.open(EXAMPLES / name))


@pytest.mark.parametrize("name", ["astronaut.jpg", "chelsea.jpg", "coffee.jpg"])
def test_photos_do_not_look_like_toy_scenes(name):
    photo = Image.open(EXAMPLES / name)
    side = min(photo.size)
    assert not scenes.looks_like_toy_scene(photo)
    assert not scenes.looks_like_toy_scene(photo.crop((0, 0, side, side)).resize((96, 96)))


def test_generated_scenes_look_like_toy_scenes_even_resized():
    assert all(scenes.looks_like_toy_scene(s.image) for s in scenes.heldout(30, seed=77))
    assert all(scenes.looks_like_toy_scene(scenes.generate_scene(s, DECORRELATED).image.resize((288, 288)))
               for s in range(10))
    noise = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    assert not scenes.looks_like_toy_scene(Image.fromarray(noise))
    assert not scenes.looks_like_toy_scene(Image.new("RGB", (96, 96), (30, 60, 200)))


def test_later_stages_can_start_from_a_stage_checkpoint(base, tmp_path):
    base = base[2] / "text.pt"
    info = train(tmp_path / "branch", STEPS.__class__(**{**STEPS.__dict__, "multi_steps": 2}), TINY, threads=1,
                 log_every=1, ckpt=tmp_path / "branch-ckpt", init_from=base)
    assert [r["stage"] for r in info["history"] if "loss" in r][-1] == "multi"
    assert sum(1 for r in info["history"] if r.get("stage") == "multi" and "loss" in r) == 2
    with pytest.raises(SystemExit):  # a setting of a finished stage may not change
        train(tmp_path / "bad", STEPS.__class__(**{**STEPS.__dict__, "text_lr": 1.0}), TINY, threads=1,
              ckpt=tmp_path / "bad-ckpt", init_from=base)


def test_noise_rows_put_random_tokens_between_bos_and_the_caption(tmp_path):
    from halviz.toy.recipe.train import Recipe

    cfg = STEPS.__class__(**{**STEPS.__dict__, "text_noise_rate": 1.0, "text_noise_len": 9, "chat_rate": 0.0})
    recipe = Recipe(cfg, TINY, tmp_path / "ckpt", torch.device("cpu"))
    tok = recipe.tokenizer
    pool = recipe._caption_pool()
    batch = recipe._text_batch(np.random.default_rng(0), pool, 6)
    special = set(tok.all_special_ids)
    captions = {tuple(c) for c in pool}
    for ids, mask, labels in zip(batch["input_ids"].tolist(), batch["attention_mask"].tolist(), batch["labels"].tolist()):
        ids = ids[:sum(mask)]
        body_start = next(i for i in range(1, len(ids)) if labels[i] != -100)
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
        assert 1 <= body_start - 1 <= 9 and not special & set(ids[1:body_start])  # 1..9 noise tokens, none special
        assert tuple(ids[body_start:-1]) in captions  # the caption comes after the noise, whole
        assert labels[body_start:len(ids)] == ids[body_start:]  # caption and EOS are the targets
    plain = recipe._text_batch(np.random.default_rng(0), pool, 6, noise=False)  # the probe's rows
    assert (plain["labels"][:, 1] != -100).all()


def test_multimodal_stage_can_freeze_late_qk_and_rehearse_text(base, tmp_path):
    base = base[2] / "text.pt"
    before = torch.load(base, map_location="cpu", weights_only=False)["model"]
    cfg = STEPS.__class__(**{**STEPS.__dict__, "multi_qk_lr_scale": 0.0, "multi_qk_from": 2, "multi_rehearsal": 2})
    info = train(tmp_path / "frozen", cfg, TINY, threads=1, log_every=1, ckpt=tmp_path / "frozen-ckpt", init_from=base)
    from transformers import LlavaForConditionalGeneration

    after = LlavaForConditionalGeneration.from_pretrained(tmp_path / "frozen").state_dict()
    for layer in range(TINY.text_layers):
        for proj in ("q_proj", "k_proj", "v_proj"):
            key = f"model.language_model.layers.{layer}.self_attn.{proj}.weight"
            same = torch.equal(before[key], after[key])
            assert same == (layer >= 2 and proj != "v_proj"), key  # only q/k of layers ≥ 2 are frozen
    rows = [r for r in info["history"] if r.get("stage") == "multi" and "loss" in r]
    assert rows and all(r["loss"] == pytest.approx(r["image_loss"] + r["text_loss"], abs=2e-4) for r in rows)


def test_qk_learning_rate_factor_scales_only_their_group():
    from halviz.toy.recipe.train import _optimizer

    a, b, c = (torch.nn.Parameter(torch.ones(2, 2)) for _ in range(3))
    bias = torch.nn.Parameter(torch.zeros(2))
    opt = _optimizer([a, b, c, bias], 1e-2, 0.1, scaled=[c], scale=0.25)
    for p in (a, b, c, bias):
        p.grad = torch.ones_like(p)
    for group in opt.param_groups:
        group["lr"] = 1e-2 * group["lr_scale"]
    opt.step()
    # Adam's first step moves every weight by lr (sign of the gradient); decay shrinks by lr·wd first.
    torch.testing.assert_close(a.detach(), torch.full((2, 2), 1 - 1e-2 * 0.1 - 1e-2))
    torch.testing.assert_close(c.detach(), torch.full((2, 2), 1 - 0.25e-2 * 0.1 - 0.25e-2))
    torch.testing.assert_close(bias.detach(), torch.full((2,), -1e-2))
