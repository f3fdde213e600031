"""POPE: parsers against hand-worked answers, construction against hand-built COCO files, scoring."""

import json
import random

import numpy as np
import pytest

from halviz.evaluation import parsers, pope, pope_cli, stats
from halviz.evaluation.pope_score import score_answers

# answer, label -> reading of (official, vcd, halc, exact), worked out by hand from each script's rule
HAND = [
    ("Yes", "yes", ("yes", "yes", "yes", "yes")),
    ("No", "no", ("no", "no", "no", "no")),
    ("Nope", "yes", ("yes", "no", "yes", None)),  # vcd: no 'yes' substring on a yes question
    ("Nope", "no", ("yes", "no", "yes", None)),  # vcd: 'no' is a substring of 'nope'
    ("NO.", "no", ("yes", "no", "no", None)),  # official: 'NO' is not one of No/no/not
    ("I don't think so", "yes", ("yes", "no", "no", None)),
    ("I don't think so", "no", ("yes", "yes", "no", None)),  # vcd: no 'no' substring -> counted yes
    ("not sure", "yes", ("no", "no", "no", None)),
    ("not sure", "no", ("no", "no", "no", None)),
    ("Yes, there is.", "yes", ("yes", "yes", "yes", None)),
    ("There is no dog.", "no", ("no", "no", "no", None)),
    ("There is no dog.", "yes", ("no", "no", "no", None)),
    ("Yes. But no cat is there.", "yes", ("yes", "yes", "yes", None)),  # first sentence only (vcd: 'yes' found)
    ("yes", "no", ("yes", "yes", "yes", "yes")),
    ("I know it", "no", ("yes", "no", "yes", None)),  # vcd: 'know' holds 'no'
]


@pytest.mark.parametrize("answer,label,expected", HAND)
def test_parsers_match_hand_worked_answers(answer, label, expected):
    got = tuple(parsers.parse(name, answer, label) for name in ("official", "vcd", "halc", "exact"))
    assert got == expected


def test_scores_and_disagreements_match_a_hand_computation():
    answers = [a for a, _, _ in HAND]
    labels = [l for _, l, _ in HAND]
    result = score_answers(answers, labels, n_boot=200, seed=1)
    for i, name in enumerate(("official", "vcd", "halc", "exact")):
        pred = [e[i] for _, _, e in HAND]
        tp = sum(p == "yes" and l == "yes" for p, l in zip(pred, labels))
        fp = sum(p == "yes" and l == "no" for p, l in zip(pred, labels))
        fn = sum(p != "yes" and l == "yes" for p, l in zip(pred, labels))
        row = result["parsers"][name]
        assert row["accuracy"]["value"] == pytest.approx(sum(p == l for p, l in zip(pred, labels)) / len(HAND))
        assert row["precision"]["value"] == pytest.approx(tp / (tp + fp) if tp + fp else 0.0)
        assert row["recall"]["value"] == pytest.approx(tp / (tp + fn))
        assert row["yes_ratio"]["value"] == pytest.approx(pred.count("yes") / len(HAND))  # predicted, not labels
        lo, hi = row["accuracy"]["ci"]
        assert lo <= row["accuracy"]["value"] <= hi
        if name != "official":
            official = [e[0] for _, _, e in HAND]
            assert result["disagree_with_official"][name] == sum(p != o for p, o in zip(pred, official))
    again = score_answers(answers, labels, n_boot=200, seed=1)
    assert again == result  # seeded bootstrap: the same interval on a rerun


def _coco(tmp_path, images):
    """images: {file name: [category names in annotation order]} -> a COCO instances file."""
    names = sorted({n for objs in images.values() for n in objs})
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(names)]
    cid = {n: i + 1 for i, n in enumerate(names)}
    ims = [{"id": i + 1, "file_name": f} for i, f in enumerate(images)]
    anns = [{"image_id": i + 1, "category_id": cid[n]} for i, objs in enumerate(images.values()) for n in objs]
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": ims, "annotations": anns, "categories": cats}))
    return path


def test_construction_on_a_hand_built_coco_file(tmp_path):
    images = {
        "a.jpg": ["dog", "cat", "umbrella", "dog"],  # repeated instance: one object
        "b.jpg": ["dog", "car", "apple", "kite"],
        "c.jpg": ["cat", "car", "dog", "bus"],
        "d.jpg": ["person", "dog"],  # only 2 objects: never sampled
    }
    path = _coco(tmp_path, images)
    built = pope.coco_splits(path, n=3, seed=0)
    # by hand, over the sampled set a, b, c: counts dog 3, cat 2, car 2, the rest 1
    counts = {"dog": 3, "cat": 2, "car": 2, "umbrella": 1, "apple": 1, "kite": 1, "bus": 1}
    co = {"dog": {"cat": 2, "car": 2, "umbrella": 1, "apple": 1, "kite": 1, "bus": 1},
          "cat": {"dog": 2, "umbrella": 1, "car": 1, "bus": 1},
          "umbrella": {"dog": 1, "cat": 1}, "car": {"dog": 2, "apple": 1, "kite": 1, "cat": 1, "bus": 1}}
    for split, questions in built.items():
        assert len(questions) == 18 and [q.question_id for q in questions] == list(range(1, 19))
        assert "d.jpg" not in {q.image for q in questions}
        for i in range(0, 18, 6):
            block = questions[i:i + 6]
            image = block[0].image
            objs = list(dict.fromkeys(images[image]))
            assert [q.label for q in block] == ["yes", "no"] * 3
            assert [q.object for q in block[::2]] == objs[:3]  # the first three objects, in order
            negatives = [q.object for q in block[1::2]]
            assert len(set(negatives)) == 3 and not set(negatives) & set(objs)
            assert set(negatives) <= set(counts)  # names of the sampled set only
            for k, (pos, neg) in enumerate(zip(block[::2], block[1::2])):
                free = [c for c in counts if c not in objs and c not in negatives[:k]]
                if split == "popular":  # the most frequent name still free
                    assert counts[neg.object] == max(counts[c] for c in free)
                if split == "adversarial":  # the most co-occurring free name, else any free name
                    ranked = [c for c in co.get(pos.object, {}) if c in free]
                    if ranked:
                        assert co[pos.object][neg.object] == max(co[pos.object][c] for c in ranked)
                    else:
                        assert neg.object in free
    a_adv = [q.object for q in built["adversarial"] if q.image == "a.jpg"]
    assert a_adv[1] == "car"  # dog's co-occurring names: cat (present), car
    assert a_adv[5] in {"apple", "kite", "bus"}  # umbrella co-occurs only with present objects: random
    assert pope.coco_splits(path, n=3, seed=0) == built  # seeded


def test_template_uses_an_before_a_vowel_only_on_the_article():
    assert pope.question_text("umbrella") == "Is there an umbrella in the image?"
    assert pope.question_text("dog") == "Is there a dog in the image?"
    assert pope.question_text("orange", "Find evidence first and then answer: is there a {} in the image?") == \
        "Find evidence first and then answer: is there an orange in the image?"


def test_too_few_images_is_an_error_naming_the_file(tmp_path):
    path = _coco(tmp_path, {"a.jpg": ["dog", "cat", "car"]})
    with pytest.raises(pope.PopeError, match="instances.json"):
        pope.coco_splits(path, n=2)


def test_random_negatives_come_from_the_seeded_generator(tmp_path):
    images = {f"{i}.jpg": random.Random(i).sample(["dog", "cat", "car", "bus", "apple", "kite", "boat"], 4)
              for i in range(20)}
    path = _coco(tmp_path, images)
    a = pope.coco_splits(path, n=10, seed=3)
    b = pope.coco_splits(path, n=10, seed=4)
    assert a == pope.coco_splits(path, n=10, seed=3) and a != b
    # asking for one split gives the same questions as building all three (the generator runs in order)
    assert pope.coco_splits(path, n=10, seed=3, splits=["adversarial"])["adversarial"] == a["adversarial"]


def test_toy_splits_are_exact_and_adversarial_asks_the_planted_partner():
    from halviz.toy.scenes import PRIOR_PAIRS

    found, built = pope.toy_splits(60, seed=0)
    partner_of = {}
    for a, b in PRIOR_PAIRS:
        partner_of.setdefault(a, set()).add(b)
        partner_of.setdefault(b, set()).add(a)
    planted = 0
    for split, questions in built.items():
        assert len(questions) == 360
        for q in questions:
            assert (q.object in found[q.image].names) == (q.label == "yes")  # exact labels
    adv = built["adversarial"]
    asked = {}
    for yes, no in zip(adv[::2], adv[1::2]):
        before = asked.setdefault(yes.image, set())
        absent = partner_of.get(yes.object, set()) - found[yes.image].names - before
        if absent:
            planted += 1
            assert no.object in absent  # the planted partner is asked whenever it is absent and not yet asked
        before.update({yes.object, no.object})
    assert planted > 0


def test_jsonl_round_trip_and_released_format(tmp_path):
    found, built = pope.toy_splits(4, seed=0)
    path = tmp_path / "toy_pope_random.json"
    pope.write_questions(path, built["random"])
    first = json.loads(path.read_text().splitlines()[0])
    assert set(first) == {"question_id", "image", "text", "label"}
    back = pope.read_questions(path)
    assert [(q.question_id, q.image, q.text, q.label) for q in back] == \
        [(q.question_id, q.image, q.text, q.label) for q in built["random"]]


def test_score_cli_prints_table_and_json(tmp_path, capsys):
    questions = [pope.Question(i + 1, "x.jpg", "Is there a dog in the image?", l) for i, (_, l, _) in enumerate(HAND)]
    qpath = tmp_path / "coco_pope_adversarial.json"
    pope.write_questions(qpath, questions)
    apath = tmp_path / "answers.jsonl"
    apath.write_text("".join(json.dumps({"question_id": i + 1, "text": a}) + "\n" for i, (a, _, _) in enumerate(HAND)))
    assert pope_cli.main(["score", "--questions", str(qpath), "--answers", str(apath)]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[1].split()[:2] == ["adversarial", "official"]
    assert pope_cli.main(["score", "--questions", str(qpath), "--answers", str(apath), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["splits"]["adversarial"]["n"] == len(HAND)
    apath.write_text(json.dumps({"question_id": 1, "text": "Yes"}) + "\n")
    assert pope_cli.main(["score", "--questions", str(qpath), "--answers", str(apath)]) == 2
    assert "answers.jsonl" in capsys.readouterr().err


def test_mcnemar_and_paired_bootstrap():
    base = np.array([1, 1, 0, 0, 1, 0, 1, 0] * 5, dtype=bool)
    other = np.array([1, 0, 0, 0, 0, 0, 1, 0] * 5, dtype=bool)
    m = stats.mcnemar(base, other)
    assert (m["only_base"], m["only_other"]) == (10, 0)
    assert m["p"] == pytest.approx(2 * 0.5 ** 10)
    metrics = {"rate": lambda s, n: stats.ratio(s["x"], n)}
    d = stats.paired_difference({"x": base}, {"x": other}, metrics, n_boot=500, seed=0)
    assert d["rate"]["diff"] == pytest.approx(-0.25)
    assert d["rate"]["ci"][1] < 0  # every replicate loses the same discordant samples
    assert stats.mcnemar(base, base)["p"] == 1.0
