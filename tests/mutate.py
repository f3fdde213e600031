"""Mutation check of the method tests: run on demand, not part of CI (pytest does not collect it).

    python tests/mutate.py [--only NAME[,NAME...]] [--timeout 300] [--list] [--no-baseline]

Copies ``halviz/``, ``tests/``, ``tools/`` and ``pytest.ini`` into a temporary folder (the working tree is
never touched), checks that the method tests pass there unchanged, then applies each mutation as
an exact text substitution, runs the relevant test files with a timeout, restores the file and
prints mutation → caught / MISSED. A mutation whose pattern does not occur exactly once stops the
script: a refactor must update the mutation, never let it "pass" silently. Exit status 0 only if
every mutation is caught; a mutated run that errors (collection error, timeout) counts as not caught.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VASPARSE, VHR = "halviz/methods/vasparse.py", "halviz/methods/vhr.py"
PRUNEHAL, KVSMOOTH = "halviz/methods/prunehal.py", "halviz/methods/kvsmooth.py"
T_VAS, T_VHR = "tests/test_vasparse.py", "tests/test_vhr.py"
T_PRUNE, T_KV = "tests/test_prunehal.py", "tests/test_kvsmooth.py"
BATCH, RUN, T_BATCH = "halviz/engine/batch.py", "halviz/engine/run.py", "tests/test_batch.py"
PACKING = "halviz/engine/packing.py"
LENS, T_LENS = "halviz/engine/lens.py", "tests/test_logit_lens.py"
T_VCD = "tests/test_vcd.py"
VAR, T_VAR = "halviz/methods/var.py", "tests/test_var.py"
T_LISTS = "tests/test_list_knobs.py"
SINK, T_SINK = "halviz/toy/designed_sink.py", "tests/test_designed_sink.py"
CAI, T_CAI = "halviz/methods/cai.py", "tests/test_cai.py"
T_SINKS = "tests/test_sink_record.py"


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    source: str  # "issue 11" for the listed breaks, "new code" for ours


MUTATIONS = (
    # ---- the breaks listed in issue 11 --------------------------------------------------------
    Mutation("vhr: reinforce the least vision-aware half (~select_heads)", VHR,
             "chosen = select_heads(vhd, outliers)", "chosen = ~select_heads(vhd, outliers)", (T_VHR,), "issue 11"),
    Mutation("vhr: outlier filter ignored by the selection in a run", VHR,
             "chosen = select_heads(vhd, outliers)", "chosen = select_heads(vhd, torch.zeros_like(outliers))",
             (T_VHR,), "issue 11"),
    Mutation("vasparse: sink penalty sign flipped", VASPARSE,
             "factor = 1.0 + beta - beta * weights", "factor = 1.0 + beta + beta * weights", (T_VAS,), "issue 11"),
    Mutation("vasparse: penalty on the wrong columns (every other one)", VASPARSE,
             "factor = 1.0 + beta - beta * weights",
             "factor = torch.where(torch.arange(weights.shape[-1]) % 2 == 0, 1.0 + beta - beta * weights, 1.0)",
             (T_VAS,), "issue 11"),
    Mutation("vasparse: penalty with W shifted one column", VASPARSE,
             "scores = sink_penalty(scores, sink_weights(self._column_mass[layer, :, :kv]), self.beta)",
             "scores = sink_penalty(scores, sink_weights(self._column_mass[layer, :, :kv]).roll(1, -1), self.beta)",
             (T_VAS,), "issue 11"),
    Mutation("vasparse: first layer's column mass in every layer", VASPARSE,
             "scores = sink_penalty(scores, sink_weights(self._column_mass[layer, :, :kv])",
             "scores = sink_penalty(scores, sink_weights(self._column_mass[self.layers[0], :, :kv])",
             (T_VAS,), "issue 11"),
    Mutation("vasparse: penalty skipped in the extra (φ) row", VASPARSE,
             'if self.params["sink"]:\n                row = sink_penalty(',
             'if False:\n                row = sink_penalty(', (T_VAS,), "issue 11"),
    Mutation("vasparse: saliency λ forced to 0", VASPARSE,
             "selection_scores(prev, saliency, self.lam, valid)", "selection_scores(prev, saliency, 0.0, valid)",
             (T_VAS,), "issue 11"),
    Mutation("vasparse: saliency shifted by one position", VASPARSE,
             "torch.softmax(self._image_mass[:, start:kv - 1], dim=-1)",
             "torch.softmax(self._image_mass[:, start - 1:kv - 2], dim=-1)", (T_VAS,), "issue 11"),
    Mutation("prunehal: masking only in the main row", PRUNEHAL,
             "rows = p.main_layout", "rows = [p.main]", (T_PRUNE,), "issue 11"),
    Mutation("kvsmooth: entropy from the attention before the other methods' edits", KVSMOOTH,
             "z = row_entropy(weights[main])  # (1,)",
             "z = row_entropy(torch.softmax(torch.matmul(query[main], key[main].repeat_interleave(query.shape[1] // "
             "key.shape[1], 1).transpose(2, 3)) * query.shape[-1] ** -0.5, -1))  # (1,)", (T_KV,), "issue 11"),
    # ---- our own, for the new code -------------------------------------------------------------
    Mutation("vasparse: selection over every column, not the generated ones", VASPARSE,
             "start, n_prev = column.prompt_len, kv - 1 - column.prompt_len", "start, n_prev = 0, kv - 1", (T_VAS,), "new code"),
    Mutation("vasparse: keep count forgets the always-kept current token", VASPARSE,
             "count = keep_count(self.keep_ratio, valid.sum(-1, keepdim=True) + 1) - 1",
             "count = keep_count(self.keep_ratio, valid.sum(-1, keepdim=True))", (T_VAS,), "new code"),
    Mutation("vasparse: saliency term not normalised", VASPARSE,
             "p = minmax(saliency[:, None, None, :].expand_as(scores), valid)",
             "p = saliency[:, None, None, :].expand_as(scores)", (T_VAS,), "new code"),
    Mutation("dpc-knn: density counts the point itself", VASPARSE,
             "dist.masked_fill(eye, torch.inf).topk(", "dist.topk(", (T_VAS,), "new code"),
    Mutation("dpc-knn: parent distance to any point, not a denser one", VASPARSE,
             "parent = dist.masked_fill(~higher, torch.inf).amin(-1)", "parent = dist.masked_fill(eye, torch.inf).amin(-1)",
             (T_VAS,), "new code"),
    Mutation("dpc-knn: centres by density alone", VASPARSE,
             "torch.argsort(-(density * delta), dim=-1, stable=True)", "torch.argsort(-density, dim=-1, stable=True)",
             (T_VAS,), "new code"),
    Mutation("dpc-knn: merged logit is the cluster max, not the mean", VASPARSE,
             "return (sums / counts.clamp_min(1)).gather(1, labels)",
             'return logits.new_zeros(logits.shape[0], clusters).scatter_reduce(1, labels, logits, "amax", '
             "include_self=False).gather(1, labels)", (T_VAS,), "new code"),
    Mutation("dpc-knn: discarded tokens masked although aggregate = dpc-knn", VASPARSE,
             "rows[which] = rows[which].scatter(1, cols, merged)",
             "rows[which] = rows[which].scatter(1, cols, torch.full_like(merged, -torch.inf))", (T_VAS,), "new code"),
    Mutation("ℓ_φ: embedding without the final norm", VASPARSE,
             "if norm is not None:\n        hidden = norm(hidden)",
             "if False:\n        hidden = norm(hidden)", (T_VAS,), "new code"),
    Mutation("ℓ_φ: embedding of the token before the current one", VASPARSE,
             "else torch.tensor([[column.generated[-1]]],",
             "else torch.tensor([[column.generated[max(-2, -len(column.generated))]]],", (T_VAS,), "new code"),
    Mutation("contrast: first generated token not contrasted", VASPARSE,
             'if not self.params["contrast"]:\n            return logits',
             'if not self.params["contrast"] or p.step == 0:\n            return logits', (T_VAS,), "new code"),
    Mutation("contrast: ℓ_θ − αℓ_φ (the released code's form)", "halviz/methods/contrast.py",
             "(1 + alpha) * theta - alpha * phi", "theta - alpha * phi", (T_VAS,), "new code"),
    Mutation("masked-pass: the φ row keeps its own cache instead of the main row's", VASPARSE,
             "Stream(PHI_STREAM, mirrors_main=True)", "Stream(PHI_STREAM, mirrors_main=False)", (T_VAS,), "new code"),
    Mutation("masked-pass: step-0 φ query not masked", VASPARSE,
             "return last.index_fill(-1, self.phi_columns, -torch.inf)[0]", "return last[0]", (T_VAS,), "new code"),
    Mutation("engine: mirrored rows not refreshed after a forward", BATCH,
             "self.batch.copy_last(self._main_row(column), i)", "pass", (T_VAS, T_BATCH), "new code"),
    Mutation("engine: a text-only row's decode positions continue the main row's", BATCH,
             "starts.append(int(next_positions[source]))",
             "starts.append(int(next_positions[where[(column.index, MAIN)]]))", (T_BATCH, T_VHR), "new code"),
    Mutation("engine: padding of shorter prefill rows not masked", BATCH,
             "mask = (torch.arange(n, device=device)[None] < lengths[:, None]).long() if padded else None",
             "mask = None", (T_BATCH, T_VHR), "new code"),
    Mutation("engine: edit hooks also run on a shared prefill row", BATCH,
             "own = [i for i, s in enumerate(names) if not (s == MAIN and column.shares_prefill)]",
             "own = list(range(len(names)))", (T_BATCH,), "new code"),
    Mutation("engine: packed prefill segments see one another (no block mask)", PACKING,
             "same = s[:, :, None] == s[:, None, :]", "same = (s[:, None, :] >= 0) | (s[:, :, None] == s[:, None, :])",
             (T_BATCH, T_VHR), "new code"),
    Mutation("engine: the cache after a ragged prefill keeps the physical rows", RUN,
             "            if packing is None:\n                self.cache.batch_select_indices(index)",
             "            if True:\n                self.cache.batch_select_indices(index)", (T_BATCH,), "new code"),
    Mutation("lens: the final norm skipped", LENS, "parts.append(self.head(self.norm(hidden)))",
             "parts.append(self.head(hidden))", (T_LENS,), "new code"),
    Mutation("lens: the prefill's query read one position early", LENS, "self._rows[slot] = hidden[mains, -1]",
             "self._rows[slot] = hidden[mains, -2]", (T_LENS,), "new code"),
    Mutation("lens: the layer below read (its input, not its output)", LENS,
             "lens.capture(plan, layer, output[0] if isinstance(output, tuple) else output)",
             "lens.capture(plan, layer + 1, output[0] if isinstance(output, tuple) else output)", (T_LENS,), "new code"),
    Mutation("engine: sink tokens read one position off (the rule's first token is not BOS)", RUN,
             "column.recorder.see_prefill_residual(layer, hidden[rows.main, :column.prompt_len])",
             "column.recorder.see_prefill_residual(layer, hidden[rows.main, 1:column.prompt_len + 1])",
             (T_SINKS,), "new code"),
    Mutation("sinks: sink dimensions from any token, not the first", "halviz/methods/sink_rule.py",
             "dims = x[0] > tau", "dims = x.amax(0) > tau", (T_SINKS, T_VAR), "new code"),
    Mutation("engine: the prefill runs the vision tower again after encode_images", BATCH,
             "done: dict[tuple[int, int], object] = self._images", "done: dict[tuple[int, int], object] = {}",
             ("tests/test_first_words.py",), "new code"),
    Mutation("engine: prefill_work reports the shortest prefill row as the prompt", BATCH,
             "max((len(r.ids) for r in rows), default=0)", "min((len(r.ids) for r in rows), default=0)",
             ("tests/test_first_words.py",), "new code"),
    Mutation("engine: a raising hook ends every column", RUN,
             "            rows.column.fail(exc)\n            return None", "            raise", (T_BATCH,), "new code"),
    Mutation("vhr: T-VHD over the reinforced layers only", VHR,
             'out["tvhd"] = t_vhd(steps, int(self.params["tvhd_top_k"]))',
             'out["tvhd"] = t_vhd(steps[:, list(self.layers)], int(self.params["tvhd_top_k"]))', (T_VHR,), "new code"),
    Mutation("vcd: signal and noise weights swapped", "halviz/methods/vcd.py",
             "out = alpha_bar.sqrt() * pixels.double() + (1 - alpha_bar).sqrt() * noise.double()",
             "out = (1 - alpha_bar).sqrt() * pixels.double() + alpha_bar.sqrt() * noise.double()", (T_VCD,), "new code"),
    Mutation("vcd: schedule over 100 steps instead of 1000", "halviz/methods/vcd.py",
             "DIFFUSION_STEPS = 1000", "DIFFUSION_STEPS = 100", (T_VCD,), "new code"),
    Mutation("vcd: contrast against the clean image's own logits", "halviz/methods/vcd.py",
             "theta, prior = logits[main:main + 1], logits[noised:noised + 1]",
             "theta, prior = logits[main:main + 1], logits[main:main + 1]", (T_VCD,), "new code"),
    Mutation("var: head rule direction flipped (non-sink share ≤ ρ)", VAR,
             "return (image_mass >= min_image) & (share >= rho)", "return (image_mass >= min_image) & (share <= rho)",
             (T_VAR,), "new code"),
    Mutation("var: image-mass floor ignored", VAR,
             "return (image_mass >= min_image) & (share >= rho)", "return share >= rho", (T_VAR,), "new code"),
    Mutation("var: budget to every non-sink token, not only the image", VAR,
             "targets = sinks.to(weights.dtype), (image & ~sinks).to(weights.dtype)",
             "targets = sinks.to(weights.dtype), (~sinks).to(weights.dtype)", (T_VAR,), "new code"),
    Mutation("var: target shares not normalised (budget × weight)", VAR,
             "+ p * sink_mass * weights * targets / safe", "+ p * sink_mass * weights * targets", (T_VAR,), "new code"),
    Mutation("var: sinks scaled down, budget dropped (softmax renormalises over all)", VAR,
             "moved = weights - p * weights * sinks + p * sink_mass * weights * targets / safe",
             "moved = weights - p * weights * sinks", (T_VAR,), "new code"),
    Mutation("var: prefill queries inside the image edited too", VAR,
             "reading = torch.arange(kv - q, kv, device=scores.device) >= self.after_image",
             "reading = torch.arange(kv - q, kv, device=scores.device) >= 0", (T_VAR,), "new code"),
    Mutation("var: τ not rescaled to the hidden size", "halviz/methods/sink_rule.py",
             "return tau * math.sqrt(hidden_size / REFERENCE_WIDTH)", "return tau", (T_VAR,), "new code"),
    Mutation("var: wrong layers (−2 read as the last layer)", "halviz/methods/layer_range.py",
             "last = num_layers + last if last < 0", "last = num_layers - 1 if last < 0", (T_VAR,), "new code"),
    Mutation("var: wrong layers (last layer edited by default)", VAR,
             'Knob("last_layer", "Last layer (−1 = last)", -2,', 'Knob("last_layer", "Last layer (−1 = last)", -1,',
             (T_VAR,), "new code"),
    Mutation("var: sinks of the layer below", VAR,
             "self.sinks.get(MAIN, {})).get(layer)", "self.sinks.get(MAIN, {})).get(layer - 1)", (T_VAR,), "new code"),
    Mutation("cai: the tilt lowers the logit (a − |a|·w)", CAI, "scores + scores.abs() * w", "scores - scores.abs() * w",
             (T_CAI,), "new code"),
    Mutation("cai: a gate opens the layer after the one it belongs to", CAI, "self._gate[layer] = opened",
             "self._gate[layer + 1] = opened", (T_CAI,), "new code"),
    Mutation("cai: relevance without the min shift (σ(κ·cos))", CAI, "sharpness * (sim - sim.min())",
             "sharpness * sim", (T_CAI,), "new code"),
    Mutation("cai: entropy in nats, not bans", CAI, "(p + ENTROPY_EPS).log()).sum(-1) / LN10",
             "(p + ENTROPY_EPS).log()).sum(-1)", (T_CAI,), "new code"),
    Mutation("cai: the prompt's text = every prompt token, not those after the image", CAI,
             "hidden[main, self.after_image:self.prompt_len].mean(0)", "hidden[main, :self.prompt_len].mean(0)",
             (T_CAI,), "new code"),
    Mutation("cai: no plausibility cut before the contrast", CAI, "PLAUSIBILITY = 0.1", "PLAUSIBILITY = 0.0",
             (T_CAI,), "new code"),
    Mutation("lists: patch list ignored (the box used)", "halviz/methods/mask_patches.py",
             'if p["patches"]:', "if False:", (T_LISTS,), "new code"),
    Mutation("lists: patch list read column:row", "halviz/methods/mask_patches.py",
             "torch.stack([grid[r, c] for r, c in pairs])", "torch.stack([grid[c, r] for r, c in pairs])",
             (T_LISTS,), "new code"),
    Mutation("lists: patches outside the grid not refused", "halviz/methods/mask_patches.py",
             "if r >= rows or c >= cols]", "if False]", (T_LISTS,), "new code"),
    Mutation("lists: head list scales every head of its layers", "halviz/methods/scale_heads.py",
             "torch.ones(num_heads, dtype=torch.float64))[head] = scale",
             "torch.ones(num_heads, dtype=torch.float64))[:] = scale", (T_LISTS,), "new code"),
    Mutation("lists: head list ignored (head and layers used)", "halviz/methods/scale_heads.py",
             'if self.params["heads"]:', "if False:", (T_LISTS,), "new code"),
    Mutation("lists: heads outside the model not refused", "halviz/methods/scale_heads.py",
             "if l >= num_layers or h >= num_heads]", "if False]", (T_LISTS,), "new code"),
    Mutation("lists: index bound not checked", "halviz/methods/index_pairs.py",
             "if a > MAX_INDEX or b > MAX_INDEX:", "if False:", (T_LISTS,), "new code"),
    Mutation("lists: length bound not checked", "halviz/methods/index_pairs.py",
             "if len(text) > MAX_PAIRS_CHARS:", "if False:", (T_LISTS,), "new code"),
    Mutation("vhr: T-VHD top-k ignores k", VHR,
             "return vhd.topk(min(k, vhd.shape[-1]), dim=-1).values.sum((-2, -1))",
             "return vhd.sum((-2, -1))", (T_VHR,), "new code"),
    Mutation("toy sink: per-layer head counts ignored", SINK,
             "count = self.heads[index] if index < len(self.heads) else num_heads", "count = num_heads",
             (T_SINK,), "new code"),
    Mutation("toy sink: the last heads carry it, not the first", SINK,
             "return range(count)", "return range(num_heads - count, num_heads)", (T_SINK,), "new code"),
)


def copy_tree(dest: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for name in ("halviz", "tests", "tools"):  # tests import the harnesses in tools/
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    shutil.copy2(ROOT / "pytest.ini", dest / "pytest.ini")


def run_tests(workdir: Path, tests: tuple[str, ...], timeout: int) -> tuple[str, str]:
    """(outcome, detail): outcome is passed, failed, error or timeout."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(workdir), "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
    try:
        done = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", f"over {timeout} s"
    failed = re.findall(r"^FAILED (\S+)", done.stdout, flags=re.M)
    if done.returncode == 0:
        return "passed", ""
    if done.returncode == 1 and failed:
        return "failed", failed[0].split("::", 1)[-1]
    tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
    return "error", f"pytest exit {done.returncode}: " + " | ".join(tail)


def apply(workdir: Path, mutation: Mutation) -> str:
    target = workdir / mutation.path
    text = target.read_text()
    found = text.count(mutation.old)
    if found != 1:
        raise SystemExit(f"mutation {mutation.name!r}: its pattern occurs {found} times in {mutation.path} "
                         "(expected exactly once); update the mutation to the current source")
    target.write_text(text.replace(mutation.old, mutation.new))
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tests/mutate.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="comma-separated substrings of mutation names")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per test run")
    parser.add_argument("--list", action="store_true", help="list the mutations and stop")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run")
    args = parser.parse_args(argv)
    wanted = [w.strip() for w in args.only.split(",") if w.strip()]
    chosen = [m for m in MUTATIONS if not wanted or any(w in m.name for w in wanted)]
    if args.list:
        for m in chosen:
            print(f"{m.source:<9} {m.name}  [{', '.join(m.tests)}]")
        return 0
    if not chosen:
        parser.error("no mutation matches --only")
    rows = []
    with tempfile.TemporaryDirectory(prefix="halviz-mutate-") as tmp:
        workdir = Path(tmp)
        copy_tree(workdir)
        for m in chosen:  # every pattern must exist before anything runs
            original = apply(workdir, m)
            (workdir / m.path).write_text(original)
        if not args.no_baseline:
            files = tuple(sorted({t for m in chosen for t in m.tests}))
            outcome, detail = run_tests(workdir, files, args.timeout * 2)
            if outcome != "passed":
                print(f"baseline: the unmutated tests do not pass ({outcome}: {detail}); nothing to measure")
                return 2
            print(f"baseline: {', '.join(files)} pass unmutated")
        for m in chosen:
            original = apply(workdir, m)
            t0 = time.perf_counter()
            try:
                outcome, detail = run_tests(workdir, m.tests, args.timeout)
            finally:
                (workdir / m.path).write_text(original)
            rows.append((m, outcome, detail, time.perf_counter() - t0))
            print(f"  {'caught' if outcome == 'failed' else 'MISSED'}: {m.name} ({outcome}, {time.perf_counter() - t0:.0f} s)",
                  flush=True)
    print()
    print(f"| {'mutation':<66} | source   | result | first failing test |")
    print(f"|{'-' * 68}|----------|--------|--------------------|")
    for m, outcome, detail, _ in rows:
        result = "caught" if outcome == "failed" else "MISSED"
        print(f"| {m.name:<66} | {m.source:<8} | {result:<6} | {detail or outcome} |")
    missed = [m.name for m, outcome, _, _ in rows if outcome != "failed"]
    print(f"\n{len(rows) - len(missed)} of {len(rows)} mutations caught" + (f"; missed: {', '.join(missed)}" if missed else ""))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
