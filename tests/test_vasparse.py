"""VASparse against independent computations: a plain-Python DPC-KNN on a dozen keys, the merged
columns' attention mass by explicit merging, W and the penalty on a hand-made attention matrix,
spies inside runs that recompute the kept set, the clusters, W and ℓ_φ on their own (ℓ_φ from the
raw weights in numpy), eager attention for the recorded statistics, and vanilla when switched off."""

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from transformers import LlavaForConditionalGeneration

from halviz.engine.decode import Decoder
from halviz.engine.recorder import RecordOptions
from halviz.methods import METHODS, build_stack
from halviz.methods.base import Method, Stream
from halviz.methods.vasparse import (PHI_STREAM, VASparse, contrast_logits, dpc_knn, keep_top, merge_logits,
                                     selection_scores, sink_penalty, sink_weights, unmasked, vasparse_layers)
from halviz.trace import Trace
from stock import stock_with_attention

FAMILIES = ["llava-1.5", "llava-interleave"]


class LogitSpy(Method):
    """Keeps one row's logits as it receives them, at its place in the stack (the main row by default)."""

    name = "logit-spy"
    hook_points = frozenset({"logits"})

    def __init__(self, stream: str = "main"):
        super().__init__()
        self.stream = stream
        self.logits: list[torch.Tensor] = []

    def edit_logits(self, p, logits):
        row = p.row(self.stream)
        self.logits.append(logits[row:row + 1].clone())
        return logits


class ScoreSpy(Method):
    """Keeps one row's attention logits as it sees them (prefill included when asked: the column then
    gets a prefill row of its own, since a shared prefill row is never shown to edit hooks)."""

    name = "score-spy"
    hook_points = frozenset({"scores"})

    def __init__(self, stream: str = "main", prefill: bool = False):
        super().__init__()
        self.stream, self.prefill = stream, prefill
        self.edits_prefill = prefill
        self.scores: list[tuple[int, int, torch.Tensor]] = []

    def wants_scores(self, p, layer):
        return p.row(self.stream) is not None and (self.prefill or p.decode)

    def edit_scores(self, p, layer, scores, keys):
        row = p.row(self.stream)
        self.scores.append((-1 if p.prefill else p.step, layer, scores[row:row + 1].clone()))
        return scores


def _ceil(ratio: float, n: int) -> int:
    return math.ceil(Fraction(ratio).limit_denominator(1000) * n)


# ---- DPC-KNN and merging on small tensors --------------------------------------------------------

def hand_dpc(points, clusters, k):
    """DPC-KNN with plain Python: density from the k nearest others, parent distance, ρ·δ centres."""
    n, dim = len(points), len(points[0])
    if n == 1:
        return [0]
    d = [[math.sqrt(sum((a - b) ** 2 for a, b in zip(points[i], points[j]))) / math.sqrt(dim) for j in range(n)]
         for i in range(n)]
    kk = min(k, n - 1)
    rho = [math.exp(-sum(x * x for x in sorted(d[i][j] for j in range(n) if j != i)[:kk]) / kk) for i in range(n)]
    delta = []
    for i in range(n):
        higher = [j for j in range(n) if rho[j] > rho[i] or (rho[j] == rho[i] and j < i)]
        delta.append(min(d[i][j] for j in higher) if higher else max(d[i]))
    centres = sorted(range(n), key=lambda i: (-rho[i] * delta[i], i))[:clusters]
    labels = [min(range(clusters), key=lambda c: (d[i][centres[c]], c)) for i in range(n)]
    for c, i in enumerate(centres):
        labels[i] = c
    return labels


def test_dpc_knn_separates_three_blobs_of_a_dozen_keys():
    blobs = [(0.0, 0.0), (10.0, 0.0), (0.0, 10.0)]
    offsets = [(0.1, 0.0), (-0.1, 0.05), (0.0, -0.12), (0.03, 0.1)]
    order = [0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2]  # interleaved, so index order does not help
    points = [[blobs[b][0] + offsets[i // 3][0], blobs[b][1] + offsets[i // 3][1]] for i, b in enumerate(order)]
    labels = dpc_knn(torch.tensor([points], dtype=torch.float64), clusters=3, k=3)[0].tolist()
    groups = {}
    for label, blob in zip(labels, order):
        groups.setdefault(label, set()).add(blob)
    assert sorted(len(g) for g in groups.values()) == [1, 1, 1] and len(groups) == 3
    assert labels == hand_dpc(points, 3, 3)


@pytest.mark.parametrize("clusters,k", [(3, 5), (4, 2), (1, 5), (12, 5)])
def test_dpc_knn_matches_plain_python_on_random_keys(clusters, k):
    gen = torch.Generator().manual_seed(clusters * 10 + k)
    points = torch.randn(3, 12, 4, generator=gen, dtype=torch.float64)
    labels = dpc_knn(points, clusters, k)
    for r in range(3):
        assert labels[r].tolist() == hand_dpc(points[r].tolist(), clusters, k)
    assert labels.max().item() == clusters - 1


def test_merged_columns_carry_the_mass_of_one_mean_token_with_log_count_bias():
    gen = torch.Generator().manual_seed(5)
    n, d = 9, 6
    q = torch.randn(d, generator=gen, dtype=torch.float64)
    keys = torch.randn(n, d, generator=gen, dtype=torch.float64)
    values = torch.randn(n, d, generator=gen, dtype=torch.float64)
    scale = d ** -0.5
    dropped = [1, 2, 4, 5, 7]
    labels = torch.tensor([[0, 1, 0, 1, 1]])  # two clusters: {1, 4}, {2, 5, 7}
    logits = (keys @ q) * scale
    ours = logits.clone()
    ours[dropped] = merge_logits(logits[dropped][None], labels, 2)[0]
    w = torch.softmax(ours, -1)
    out = w @ values
    # explicit: the kept columns plus one column per cluster with mean key, mean value, +ln|c|
    kept = [i for i in range(n) if i not in dropped]
    members = [[1, 4], [2, 5, 7]]
    col_logits = [float(logits[i]) for i in kept]
    col_values = [values[i] for i in kept]
    for m in members:
        k_bar, v_bar = keys[m].mean(0), values[m].mean(0)
        col_logits.append(float(k_bar @ q) * scale + math.log(len(m)))
        col_values.append(v_bar)
    z = sum(math.exp(x) for x in col_logits)
    explicit_w = [math.exp(x) / z for x in col_logits]
    for slot, i in enumerate(kept):
        assert w[i].item() == pytest.approx(explicit_w[slot], rel=1e-12)
    for c, m in enumerate(members):
        assert w[m].sum().item() == pytest.approx(explicit_w[len(kept) + c], rel=1e-12)
    explicit_out = sum(wi * vi for wi, vi in zip(explicit_w, col_values))
    torch.testing.assert_close(out, explicit_out, rtol=1e-12, atol=1e-12)


# ---- selection, W and the penalty on small tensors -----------------------------------------------

def _hand_keep(prev, mass, lam, ratio):
    """Kept previous generated tokens per row with plain Python (δ = minmax(s²) + λ·minmax(softmax(m)))."""
    b, h, q, n = prev.shape
    keep = np.zeros(prev.shape, dtype=bool)
    for bi in range(b):
        e = [math.exp(float(x)) for x in mass[bi]]
        p = [x / sum(e) for x in e]
        for hi in range(h):
            for qi in range(q):
                row = prev[bi, hi, qi].tolist()
                valid = [j for j in range(n) if row[j] > -1e30]
                def norm(values):
                    lo, top = min(values[j] for j in valid), max(values[j] for j in valid)
                    return {j: (values[j] - lo) / (top - lo) if top > lo else 0.0 for j in valid}
                sq, pn = norm([x * x for x in row]), norm(p)
                delta = {j: sq[j] + lam * pn[j] for j in valid}
                ranked = sorted(valid, key=lambda j: (-delta[j], j))
                for j in ranked[: _ceil(ratio, len(valid) + 1) - 1]:
                    keep[bi, hi, qi, j] = True
    return keep


@pytest.mark.parametrize("ratio", [0.5, 0.3, 0.9, 1.0])
@pytest.mark.parametrize("lam", [0.0, 1.0, 5.0])
def test_kept_set_is_top_s_by_delta(ratio, lam):
    gen = torch.Generator().manual_seed(3)
    prev = torch.randn(2, 3, 1, 11, generator=gen, dtype=torch.float64) * 2
    prev[0, :, :, 4] = float("-inf")  # a column another method masked
    prev[1, 1, :, 2] = torch.finfo(torch.float32).min
    mass = torch.rand(2, 11, generator=gen, dtype=torch.float64)
    valid = unmasked(prev)
    count = torch.ceil(valid.sum(-1, keepdim=True).double().add(1) * ratio - 1e-9).long() - 1
    keep = keep_top(selection_scores(prev, torch.softmax(mass, -1), lam, valid), count, valid)
    np.testing.assert_array_equal(keep.numpy(), _hand_keep(prev.numpy(), mass.numpy(), lam, ratio))
    assert not keep[0, :, :, 4].any()


def test_saliency_is_not_inert_at_lambda_one():
    """With both terms normalised, λ = 1 changes the kept set against λ = 0 in many rows."""
    gen = torch.Generator().manual_seed(11)
    prev = torch.randn(1, 32, 1, 40, generator=gen, dtype=torch.float64)
    mass = torch.rand(1, 40, generator=gen, dtype=torch.float64)
    valid = unmasked(prev)
    count = torch.full((1, 32, 1, 1), 20)
    a = keep_top(selection_scores(prev, torch.softmax(mass, -1), 1.0, valid), count, valid)
    b = keep_top(selection_scores(prev, torch.softmax(mass, -1), 0.0, valid), count, valid)
    assert (a != b).any(-1).float().mean() > 0.5


def test_sink_weights_and_penalty_on_a_hand_made_attention_matrix():
    attn = torch.tensor([[1.0, 0, 0, 0, 0],
                         [0.6, 0.4, 0, 0, 0],
                         [0.5, 0.2, 0.3, 0, 0],
                         [0.7, 0.1, 0.1, 0.1, 0],
                         [0.4, 0.1, 0.2, 0.1, 0.2]], dtype=torch.float64)
    # Σ_{i≥j} a_{i,j}: column sums 3.2, 0.8, 0.6, 0.2, 0.2; W = softmax over all five columns
    sums = [3.2, 0.8, 0.6, 0.2, 0.2]
    z = sum(math.exp(s) for s in sums)
    expected_w = [math.exp(s) / z for s in sums]
    w = sink_weights(attn.sum(0, keepdim=True))
    np.testing.assert_allclose(w[0].numpy(), expected_w, rtol=1e-12)
    beta = 0.3
    scores = torch.tensor([[[[2.0, -1.0, 0.5, float("-inf"), 3.0]]]], dtype=torch.float64)
    out = sink_penalty(scores, w, beta)
    for j in range(5):
        s = scores[0, 0, 0, j].item()
        if math.isinf(s):
            assert math.isinf(out[0, 0, 0, j].item()) and out[0, 0, 0, j].item() < 0
        else:
            assert out[0, 0, 0, j].item() == pytest.approx((1 + beta) * s - beta * expected_w[j] * s, rel=1e-12)


def test_contrast_with_plausibility_cut_on_small_tensors():
    theta = torch.tensor([[3.0, 2.9, 1.0, -2.0, 0.5]], dtype=torch.float64)
    phi = torch.tensor([[1.0, 3.5, 0.0, 4.0, -1.0]], dtype=torch.float64)
    out = contrast_logits(theta, phi, alpha=0.5, cut=0.1)
    p = torch.softmax(theta, -1)[0]
    for j in range(5):
        if p[j] >= 0.1 * p.max():
            assert out[0, j].item() == pytest.approx(1.5 * theta[0, j].item() - 0.5 * phi[0, j].item())
        else:
            assert out[0, j].item() == float("-inf")
    assert out[0].argmax().item() == 0 and torch.isneginf(out[0, 3])


def test_layer_rule():
    assert vasparse_layers(32) == tuple(range(2, 32))
    assert vasparse_layers(24) == tuple(range(2, 24))
    assert vasparse_layers(40) == tuple(range(3, 40))
    assert vasparse_layers(3) == (1, 2) and vasparse_layers(2) == (1,)
    assert vasparse_layers(32, first_layer=5) == tuple(range(5, 32))


# ---- inside a run ---------------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("aggregate", ["none", "dpc-knn"])
def test_selection_and_aggregation_inside_a_run(tiny_models_f64, photo, family, aggregate):
    """Recompute every kept set (δ with λ = 5 from the spies' own attention) and every cluster by hand."""
    ratio, lam = 0.5, 5.0
    before, after = ScoreSpy(), ScoreSpy()
    method = VASparse(keep_ratio=ratio, saliency_weight=lam, sink=False, contrast=False, aggregate=aggregate)
    dec = Decoder(tiny_models_f64[family], photo, methods=[before, method, after], max_new_tokens=16)
    dec.run_to_end()
    run = dec.run
    layers, last, n0 = set(vasparse_layers(run.num_layers)), run.num_layers - 1, run.prompt_len
    image = list(dec.layout.positions)
    mass = {}  # position → its own last-layer head-mean image attention, from the applied logits
    for step, layer, s_out in after.scores:
        if layer == last:
            mass[n0 + step - 1] = torch.softmax(s_out[0, :, -1], -1)[:, image].sum(-1).mean().item()
    lam_matters = dropped_any = False
    for (step, layer, s_in), (_, _, s_out) in zip(before.scores, after.scores):
        kv = n0 + step
        if layer not in layers or step < 2:
            assert torch.equal(s_in, s_out)
            continue
        assert torch.equal(s_out[..., :n0], s_in[..., :n0]) and torch.equal(s_out[..., -1], s_in[..., -1])
        prev_in, prev_out = s_in[..., n0:kv - 1], s_out[..., n0:kv - 1]
        m = np.array([[mass[p] for p in range(n0, kv - 1)]])
        keep = _hand_keep(prev_in.numpy(), m, lam, ratio)
        lam_matters |= bool((keep != _hand_keep(prev_in.numpy(), m, 0.0, ratio)).any())
        assert torch.equal(prev_out[torch.from_numpy(keep)], prev_in[torch.from_numpy(keep)])
        keys = dec.cache.layers[layer].keys[0]  # (KVH, seq, D), never rewritten
        rep = run.num_heads // keys.shape[0]
        for h in range(run.num_heads):
            gone = [j for j in range(kv - 1 - n0) if not keep[0, h, 0, j]]
            dropped_any |= bool(gone)
            if aggregate == "none":
                assert torch.isneginf(prev_out[0, h, 0, gone]).all()
                continue
            points = keys[h // rep, [n0 + j for j in gone]].tolist()
            labels = hand_dpc(points, math.ceil(len(gone) / 4), 5) if gone else []
            for j, label in zip(gone, labels):
                members = [g for g, lab in zip(gone, labels) if lab == label]
                want = sum(prev_in[0, h, 0, g].item() for g in members) / len(members)
                assert prev_out[0, h, 0, j].item() == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert lam_matters and dropped_any  # the checks had power


@pytest.mark.parametrize("family", FAMILIES)
def test_sink_penalty_inside_a_run_uses_each_layers_accumulated_attention(tiny_models_f64, photo, family):
    beta = 0.5
    before, after = ScoreSpy(), ScoreSpy(prefill=True)
    method = VASparse(sink_beta=beta, selection=False, contrast=False)
    dec = Decoder(tiny_models_f64[family], photo, methods=[before, method, after], max_new_tokens=6)
    dec.run_to_end()
    run = dec.run
    layers = set(vasparse_layers(run.num_layers))
    total = run.prompt_len + 6
    acc = {layer: torch.zeros(total, dtype=torch.float64) for layer in range(run.num_layers)}
    outs = {}
    for step, layer, s_out in after.scores:  # prefill (step −1) then decode, in order
        w = torch.softmax(s_out[0], -1).mean(0)  # (q, kv) head-mean applied attention
        if step >= 0:
            outs[(step, layer)] = (s_out, acc[layer].clone())
        acc[layer][: w.shape[-1]] += w.sum(0)
    checked = 0
    for step, layer, s_in in before.scores:
        s_out, mass = outs[(step, layer)]
        if layer not in layers:
            assert torch.equal(s_in, s_out)
            continue
        kv = s_in.shape[-1]
        w = torch.exp(mass[:kv]) / torch.exp(mass[:kv]).sum()
        torch.testing.assert_close(s_out, s_in * (1 + beta - beta * w), rtol=1e-12, atol=1e-12)
        checked += 1
    assert checked == len(layers) * 5
    if len(layers) > 1:  # different layers really have different W
        l0, l1 = sorted(layers)[:2]
        assert not torch.allclose(acc[l0], acc[l1])


@pytest.mark.parametrize("family", FAMILIES)
def test_masked_pass_applies_the_penalty_and_the_random_mask(tiny_models_f64, photo, family):
    beta, seed, rate = 0.5, 3, 0.5
    main = ScoreSpy(prefill=True)
    phi_in, phi_out = ScoreSpy(PHI_STREAM, prefill=True), ScoreSpy(PHI_STREAM, prefill=True)
    method = VASparse(sink_beta=beta, selection=False, phi="masked-pass", seed=seed, mask_rate=rate)
    dec = Decoder(tiny_models_f64[family], photo, methods=[phi_in, method, main, phi_out], max_new_tokens=4)
    dec.run_to_end()
    run = dec.run
    layers = set(vasparse_layers(run.num_layers))
    n_img = len(dec.layout.positions)
    drawn = torch.randperm(n_img, generator=torch.Generator().manual_seed(seed))[: round(rate * n_img)]
    masked = torch.tensor(dec.layout.positions)[drawn]
    rows = []  # (step whose query it is, layer, head-mean applied attention summed over its queries)
    for step, layer, s in main.scores:
        w = torch.softmax(s[0], -1).mean(0)  # (q, kv)
        if step < 0:  # the prefill: its last query is step 0's own
            rows += [(-1, layer, w[:-1].sum(0)), (0, layer, w[-1])]
        else:
            rows.append((step, layer, w.sum(0)))
    assert len(phi_in.scores) == 4 * run.num_layers  # a φ row at every step, step 0 (the prefill) included
    for (step, layer, s_in), (_, _, s_out) in zip(phi_in.scores, phi_out.scores):
        if layer not in layers:
            assert torch.equal(s_in, s_out)
            continue
        if step < 0:  # the prefill: only the branch's last query is its own, the others are the main row's
            assert torch.equal(s_in[..., :-1, :], s_out[..., :-1, :])
            s_in, s_out, step = s_in[..., -1:, :], s_out[..., -1:, :], 0
        kv = s_in.shape[-1]
        # the φ query of step s sees the main row's attention of the queries before it (prefill: −1)
        mass = torch.zeros(kv, dtype=torch.float64)
        for r, l, w in rows:
            if l == layer and r < step:
                mass[: w.shape[-1]] += w
        expected = s_in * (1 + beta - beta * torch.softmax(mass, -1))
        expected[..., masked] = float("-inf")
        torch.testing.assert_close(s_out, expected, rtol=1e-12, atol=1e-12, msg=f"step {step} layer {layer}")


def _phi_by_hand(loaded, token: int, normalise: bool) -> np.ndarray:
    """lm_head(RMSNorm(embed(token))) in numpy from the raw weights."""
    model = loaded.model
    h = model.get_input_embeddings().weight[token].detach().double().numpy()
    if normalise:
        norm = model.get_decoder().norm
        h = h / np.sqrt(np.mean(h * h) + norm.variance_epsilon) * norm.weight.detach().double().numpy()
    return model.get_output_embeddings().weight.detach().double().numpy() @ h


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("phi", ["embedding", "embedding-raw"])
def test_contrast_at_every_step_from_the_first_with_embedding_phi(tiny_models, photo, family, phi):
    alpha = 1.0
    loaded = tiny_models[family]
    theta_spy, final_spy = LogitSpy(), LogitSpy()
    dec = Decoder(loaded, photo, methods=[theta_spy, VASparse(alpha=alpha, phi=phi), final_spy], max_new_tokens=6)
    trace = dec.run_to_end()
    inputs = [int(dec.inputs["input_ids"][0, -1])] + dec.token_ids[:-1]  # the token each step reads
    assert len(final_spy.logits) == len(inputs)
    for step, (theta, final, token) in enumerate(zip(theta_spy.logits, final_spy.logits, inputs)):
        phi_logits = torch.from_numpy(_phi_by_hand(loaded, token, phi == "embedding"))[None]
        p = torch.softmax(theta.double(), -1)
        expected = torch.where(p >= 0.1 * p.max(), 2 * theta.double() - phi_logits, float("-inf"))
        assert torch.equal(torch.isinf(final), torch.isinf(expected)), step
        finite = torch.isfinite(expected)
        torch.testing.assert_close(final.double()[finite], expected[finite], rtol=1e-4, atol=1e-4)
    phi_ids = trace.arrays["method/vasparse/phi_top_ids"]
    assert phi_ids.shape == (6, 5) and (phi_ids >= 0).all()
    first = _phi_by_hand(loaded, inputs[0], phi == "embedding")
    assert phi_ids[0, 0] == int(np.argmax(first))


class PhiSpy(Method):
    """ℓ_φ of the masked-pass reading on its own: a branch row of its own that mirrors the main row's
    cache, its last prompt query (step 0) and every decode query masked at the seeded image columns."""

    name = "phi-spy"
    hook_points = frozenset({"scores", "logits"})

    def __init__(self, layers, seed: int, rate: float):
        super().__init__()
        self.layers, self.seed, self.rate = set(layers), seed, rate
        self.phi: list[torch.Tensor] = []

    def streams(self):
        return (Stream("phi-spy", mirrors_main=True),)

    def setup(self, column):
        n = len(column.image_index)
        drawn = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))[: round(self.rate * n)]
        self.columns = column.image_index[drawn]

    def wants_scores(self, p, layer):
        return p.row("phi-spy") is not None and layer in self.layers

    def edit_scores(self, p, layer, scores, keys):
        scores = scores.clone()
        scores[p.row("phi-spy"), :, -1:, self.columns] = float("-inf")
        return scores

    def edit_logits(self, p, logits):
        row = p.row("phi-spy")
        self.phi.append(logits[row:row + 1].clone())
        return logits


@pytest.mark.parametrize("family", FAMILIES)
def test_masked_pass_contrast_from_the_first_step(tiny_models, photo, family):
    alpha, seed, rate = 1.0, 7, 0.5
    loaded = tiny_models[family]
    theta_spy, final_spy = LogitSpy(), LogitSpy()
    phi_spy = PhiSpy(vasparse_layers(loaded.adapter.num_layers), seed, rate)
    method = VASparse(alpha=alpha, seed=seed, mask_rate=rate, sink=False, selection=False, phi="masked-pass")
    dec = Decoder(loaded, photo, methods=[theta_spy, phi_spy, method, final_spy], max_new_tokens=6)
    dec.run_to_end()
    assert len(phi_spy.phi) == len(dec.token_ids)
    for theta, phi, final in zip(theta_spy.logits, phi_spy.phi, final_spy.logits):
        assert not torch.allclose(theta, phi)
        p = torch.softmax(theta, -1)
        expected = torch.where(p >= 0.1 * p.max(), (1 + alpha) * theta - alpha * phi, float("-inf"))
        assert torch.equal(torch.isinf(final), torch.isinf(expected))
        finite = torch.isfinite(expected)
        torch.testing.assert_close(final[finite], expected[finite], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_masked_branch_leaves_the_main_row_exact(tiny_models_f64, photo, family):
    """α = 0 with only the contrast on: θ itself at every step, so the φ row beside the main row (its
    mirrored cache, its masked queries) changed nothing in the main row (float64: batch rounding only)."""
    ours, plain = LogitSpy(), LogitSpy()
    dec = Decoder(tiny_models_f64[family], photo, methods=[VASparse(alpha=0.0, phi="masked-pass", selection=False,
                                                                    sink=False), ours], max_new_tokens=8)
    dec.run_to_end()
    vanilla = Decoder(tiny_models_f64[family], photo, methods=[plain], max_new_tokens=8)
    vanilla.run_to_end()
    assert dec.token_ids == vanilla.token_ids
    for a, b in zip(ours.logits, plain.logits):
        finite = torch.isfinite(a)
        assert finite.any()
        assert (a[finite] - b[finite]).abs().max().item() <= 1e-9


@pytest.mark.parametrize("family", FAMILIES)
def test_recorded_statistics_match_eager_attention(tiny_models, tiny_model_dirs, photo, family):
    # S = 1, β = 0, α = 0: the decode is plain greedy, so teacher-forced eager attentions are its own
    dec = Decoder(tiny_models[family], photo, methods=[VASparse(keep_ratio=1.0, alpha=0.0, sink_beta=0.0)],
                  max_new_tokens=5, record=RecordOptions(enabled=False))
    trace = dec.run_to_end()
    model = LlavaForConditionalGeneration.from_pretrained(tiny_model_dirs[family], attn_implementation="eager").eval()
    ids = torch.cat([dec.inputs["input_ids"], torch.tensor([dec.token_ids[:-1]])], dim=1)
    with torch.no_grad():
        attentions = model(input_ids=ids, pixel_values=dec.inputs["pixel_values"], output_attentions=True).attentions
    image = list(dec.layout.positions)
    last = attentions[-1][0].double().mean(0)
    np.testing.assert_allclose(trace.arrays["method/vasparse/image_mass"], last[:, image].sum(-1).numpy(), atol=1e-5)
    np.testing.assert_array_equal(trace.arrays["method/vasparse/sink_positions"], np.arange(ids.shape[1]))
    for slot, layer in enumerate(trace.arrays["method/vasparse/layers"]):
        sums = attentions[layer][0].double().mean(0).sum(0).numpy()  # Σ_{i≥j} a_{i,j}, all columns
        w = np.exp(sums - sums.max()) / np.exp(sums - sums.max()).sum()
        np.testing.assert_allclose(trace.arrays["method/vasparse/sink_w"][slot], w, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_switched_off_gives_vanilla_tokens(tiny_models, photo, family):
    vanilla = Decoder(tiny_models[family], photo, max_new_tokens=12)
    vanilla.run_to_end()
    off = Decoder(tiny_models[family], photo, methods=[VASparse(keep_ratio=1.0, alpha=0.0, sink_beta=0.0)],
                  max_new_tokens=12)
    trace = off.run_to_end()
    assert off.token_ids == vanilla.token_ids
    kept = trace.arrays["method/vasparse/kept_generated"].astype(np.float64)
    assert np.nanmin(kept) == 1.0
    on = Decoder(tiny_models[family], photo, methods=[VASparse(alpha=1.0, keep_ratio=0.3)], max_new_tokens=12)
    on.run_to_end()
    assert on.token_ids != vanilla.token_ids  # the method does act on these models


def test_trace_arrays(tiny_models, photo, tmp_path):
    dec = Decoder(tiny_models["llava-1.5"], photo, methods=[VASparse(keep_ratio=0.5)], max_new_tokens=12,
                  stop_at_eos=False)
    trace = dec.run_to_end()
    back = Trace.load(trace.save(tmp_path / "vasparse")[0])  # the method arrays pass the file checks
    arrays = trace.arrays
    for name, array in arrays.items():
        np.testing.assert_array_equal(back.arrays[name], array)
    kept = arrays["method/vasparse/kept_generated"].astype(np.float64)
    assert kept.shape == (12, 12) and np.isnan(kept[0]).all()
    for t in range(1, 12):  # step t reads generated tokens 0..t−1; the current one is always kept
        assert not np.isnan(kept[t, :t]).any() and np.isnan(kept[t, t:]).all() and kept[t, t - 1] == 1
    assert (kept[4:] < 1).any() and np.nanmin(kept) >= 0
    merged = arrays["method/vasparse/merged_columns"]
    assert merged.shape == (12,) and merged[-1] >= 1 and merged[0] == 0
    assert arrays["method/vasparse/theta_top_ids"].shape == (12, 5)
    assert np.isfinite(arrays["method/vasparse/phi_top_logits"]).all()
    assert "kept_image" not in {k.split("/")[-1] for k in arrays}  # image tokens are never dropped


def test_registered_and_stacks(tiny_models, photo):
    assert METHODS["vasparse"] is VASparse and list(METHODS).index("vasparse") == 2
    stack = build_stack(["vasparse", "vhr"], {"vasparse": {"keep_ratio": 0.25, "phi": "masked-pass"}})
    assert [m.name for m in stack] == ["vasparse", "vhr"] and stack[0].keep_ratio == 0.25
    dec = Decoder(tiny_models["llava-1.5"], photo, methods=build_stack(["prunehal", "vasparse", "kvsmooth"]),
                  max_new_tokens=6)
    dec.run_to_end()
    assert len(dec.token_ids) == 6
    with pytest.raises(ValueError):
        VASparse(phi="second-pass")


@pytest.mark.parametrize("family", FAMILIES)
def test_masked_branch_equals_a_masked_forward_of_the_whole_sequence(tiny_models_f64, tiny_model_dirs, photo, family):
    """ℓ_φ of step s = a fresh forward of prompt + tokens < s (no cache) whose last query alone is masked:
    checks the φ row's mirrored cache and its masked queries without the engine's rows."""
    seed, rate = 5, 0.5
    loaded = tiny_models_f64[family]
    method = VASparse(phi="masked-pass", seed=seed, mask_rate=rate, sink=False, selection=False, alpha=1.0)
    dec = Decoder(loaded, photo, methods=[method], max_new_tokens=5, stop_at_eos=False)
    trace = dec.run_to_end()
    n_img = len(dec.layout.positions)
    drawn = torch.randperm(n_img, generator=torch.Generator().manual_seed(seed))[: round(rate * n_img)]
    columns = torch.tensor(dec.layout.positions)[drawn]
    layers = set(vasparse_layers(dec.run.num_layers))

    def hide(layer, queries, kv):  # the seeded image columns, for the last query alone
        if layer not in layers:
            return None
        mask = torch.zeros(len(queries), kv, dtype=torch.bool)
        mask[-1, columns] = True
        return mask

    stock = stock_with_attention(tiny_model_dirs[family], f"masklast-{family}", hide)
    ids, tokens = dec.inputs["input_ids"], dec.token_ids
    for step in range(len(tokens)):
        seq = torch.cat([ids, torch.tensor([tokens[:step]], dtype=ids.dtype)], dim=1)
        with torch.no_grad():
            phi = stock(input_ids=seq, pixel_values=dec.inputs["pixel_values"]).logits[0, -1]
        top = phi.topk(5)
        np.testing.assert_array_equal(trace.arrays["method/vasparse/phi_top_ids"][step], top.indices.numpy())
        np.testing.assert_allclose(trace.arrays["method/vasparse/phi_top_logits"][step], top.values.numpy(),
                                   rtol=1e-5, atol=1e-5)  # stored as float32
