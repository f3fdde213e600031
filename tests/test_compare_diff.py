"""The original-vs-intervention diff of the comparison columns, against solo decodes compared by hand."""

from halviz.engine.decode import Decoder
from halviz.methods import build_stack
from halviz.ui.compare import column_result, decode_rounds, first_divergence, with_divergence


def test_first_divergence_by_hand():
    assert first_divergence([1, 2, 3], [1, 2, 4]) == 2
    assert first_divergence([1, 2, 3], [9]) == 0
    assert first_divergence([1, 2], [1, 2, 3]) is None  # a prefix: nothing differs yet
    assert first_divergence([], [1]) is None


def test_columns_are_diffed_against_the_first(tiny_models, photo):
    loaded = tiny_models["llava-1.5"]
    stacks = [[], build_stack(["scale_heads"], {"scale_heads": {"head": -1, "scale": 0.0, "first_layer": 1}}), []]
    final = list(decode_rounds(loaded, photo, "Describe.", stacks, 8, update_every_s=0))[-1]
    solo = []
    for stack in stacks:
        dec = Decoder(loaded, photo, "Describe.", [type(m)(**m.params) for m in stack], max_new_tokens=8)
        dec.run_to_end()
        solo.append(dec.token_ids)
    assert final.tokens == solo
    expected = next(i for i, (a, b) in enumerate(zip(solo[0], solo[1])) if a != b)  # the silenced heads do act
    results = with_divergence([column_result(n, n.title(), t, 1.0, f, None) for n, t, f in
                               zip(("vanilla", "scaled", "again"), final.texts, final.finish)], final.tokens)
    assert results[0].baseline is None and results[1].baseline == "Vanilla"
    assert results[1].diverges_at == expected and results[2].diverges_at is None
    assert f"differs from Vanilla from step {expected}" in results[1].summary_markdown()
    assert "same tokens as Vanilla so far" in results[2].summary_markdown()
    assert results[1].summary_json()["first_divergence_step"] == expected
