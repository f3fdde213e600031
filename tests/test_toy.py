"""The toy world: scenes match their object lists, training runs, the bundled model captions well."""

import numpy as np
import pytest

from halviz.engine.decode import Decoder
from halviz.hallucination import chair_metrics
from halviz.models import TOY_MODEL_DIR, load_model
from halviz.toy import scenes
from halviz.toy.captions import GrammarConfig, caption_for


@pytest.mark.parametrize("seed", range(40))
def test_scene_objects_are_drawn_where_listed(seed):
    scene = scenes.generate_scene(seed)
    pixels = np.asarray(scene.image)
    assert pixels.shape == (scenes.IMAGE_SIZE, scenes.IMAGE_SIZE, 3)
    assert 2 <= len(scene.objects) <= 5 and len(scene.names) == len(scene.objects)
    for obj in scene.objects:
        exact = np.all(pixels == np.array(obj.rgb, dtype=np.uint8), axis=-1)
        ys, xs = np.nonzero(exact)
        x0, y0, x1, y1 = obj.box
        inside = (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)
        assert inside.sum() >= 10, f"{obj.name} has almost no pixels in its box"
        # the box is tight: the glyph touches all four sides
        assert xs[inside].min() == x0 and xs[inside].max() == x1 and ys[inside].min() == y0 and ys[inside].max() == y1
    for a in scene.objects:  # glyphs never overlap
        for b in scene.objects:
            if a is not b:
                assert a.box[0] > b.box[2] or a.box[2] < b.box[0] or a.box[1] > b.box[3] or a.box[3] < b.box[1]


def test_captions_name_exactly_the_scene_objects():
    for seed in range(30):
        scene = scenes.generate_scene(seed)
        from halviz.hallucination import extract_mentions

        named = {m.canonical for m in extract_mentions(caption_for(scene, seed))}
        assert named == scene.names


def test_a_caption_closes_with_the_count_of_what_it_named():
    words = {2: "two", 3: "three", 4: "four", 5: "five"}
    for seed in range(30):
        scene = scenes.generate_scene(seed)
        caption = caption_for(scene, seed)
        *body, last = [s.strip() for s in caption.split(" .") if s.strip()]
        assert last == f"{words[len(scene.objects)]} things in all"
        assert "in all" not in " .".join(body)
    plain = caption_for(scenes.generate_scene(0), 0, GrammarConfig(count_sentence=False))
    assert "in all" not in plain and plain.endswith(" .")


def test_broken_pair_and_control_sets():
    for trigger, partner in scenes.PRIOR_PAIRS:
        assert all(trigger in s.names and partner not in s.names for s in scenes.broken_pair((trigger, partner), 10))
        assert all(trigger not in s.names and partner not in s.names for s in scenes.control((trigger, partner), 10))


@pytest.mark.skipif(not (TOY_MODEL_DIR / "config.json").exists(), reason="bundled toy model not built")
def test_bundled_model_captions_held_out_scenes():
    loaded = load_model("toy")
    sample = scenes.heldout(20, seed=4242)
    captions = [Decoder(loaded, s.image, max_new_tokens=64).run_to_end().caption for s in sample]
    result = chair_metrics(captions, [frozenset(s.names) for s in sample])
    # Thresholds: measured figures on this set minus a margin (see the toy-model table in docs/measured-figures.md).
    assert result.precision >= PRECISION_FLOOR and result.recall >= RECALL_FLOOR, (result.precision, result.recall)


# Shipped model (fifth edition, halviz/assets/toy-llava/training_info.json) on this 20-scene set:
# precision 0.987, recall 0.962; the floors leave room for a retrained model without accepting the
# first edition's 0.657 / 0.590.
PRECISION_FLOOR = 0.85
RECALL_FLOOR = 0.80
