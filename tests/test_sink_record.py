"""Every traced column records which prompt tokens are attention sinks in each layer (VAR's activation
rule), checked against the rule applied by hand to transformers' own hidden states; the toy's designed
sink is BOS alone (no visual sink), and a VAR column's own record agrees."""

import numpy as np
import torch

from halviz.engine.batch import BatchDecoder
from halviz.methods.var import VAR
from halviz.session.examples import EXAMPLES_DIR
from PIL import Image

PROMPT = "Describe the image."


def sinks_by_hand(hidden: np.ndarray, tau: float) -> np.ndarray:
    """The rule in numpy: x = h / rms(h); sink dimensions: |x_BOS| > τ; a sink: |x_d| > τ in one of them."""
    x = np.abs(hidden / np.sqrt((hidden ** 2).mean(-1, keepdims=True) + 1e-6))
    dims = x[0] > tau
    return (x[:, dims] > tau).any(-1) if dims.any() else np.zeros(len(x), bool)


def test_the_recorded_sinks_are_the_rule_on_the_stock_models_hidden_states(toy):
    image = Image.open(EXAMPLES_DIR / "toy-knife-no-fork.png")
    decoder = BatchDecoder(toy, image, PROMPT, [[], [VAR()]], max_new_tokens=2)
    for _ in decoder:
        pass
    plain, var = decoder.trace(0), decoder.trace(1)
    recorded = plain.arrays["sink_tokens"]
    layers, prompt_len = toy.adapter.num_layers, plain.meta["prompt_len"]
    assert recorded.shape == (layers, prompt_len) and recorded.dtype == np.uint8
    tau = 20 * np.sqrt(toy.model.config.text_config.hidden_size / 4096)
    assert plain.meta["sink_rule"] == {"rule": "VAR", "tau": round(tau, 6)}
    with torch.no_grad():  # hidden_states[l] is the input of decoder layer l
        hidden = toy.model(**decoder.inputs, output_hidden_states=True).hidden_states
    expected = np.stack([sinks_by_hand(hidden[l][0].double().numpy(), tau) for l in range(layers)])
    assert (recorded.astype(bool) == expected).all()
    # The designed sink: BOS is a sink from the layers where its massive dimension is read, no image token ever.
    image_positions = plain.meta["image_positions"]
    assert recorded[:, 0].any() and not recorded[:, image_positions].any()
    # VAR's own record (its layers only) agrees with the engine's; the engine records the VAR column's own main row.
    var_sinks = var.arrays["method/var/sinks"]
    edited = [l for l in range(layers) if var_sinks[l].any()]
    assert edited and all((var_sinks[l] == var.arrays["sink_tokens"][l]).all() for l in edited)
    assert (var.arrays["sink_tokens"] == recorded).all()


def test_an_untraced_decode_records_no_sinks(toy):
    from halviz.engine.recorder import RecordOptions

    image = Image.open(EXAMPLES_DIR / "toy-knife-no-fork.png")
    decoder = BatchDecoder(toy, image, PROMPT, [[]], max_new_tokens=1, record=RecordOptions(enabled=False))
    for _ in decoder:
        pass
    trace = decoder.trace(0)
    assert "sink_tokens" not in trace.arrays and "sink_rule" not in trace.meta
