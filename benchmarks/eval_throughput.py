"""Evaluation throughput: rank classification vs greedy generation, examples per second,
with mptune's fast path (prompt once per task; rank classification also runs each
source once for all its choices; generation decodes from the prefilled prompt cache)
and with the plain path (one row per choice; transformers' generate()).

    python benchmarks/eval_throughput.py          # ~4 min on 2 busy cores
    python benchmarks/eval_throughput.py --quick  # 2-layer smoke run (not committed)

SmolLM2-135M-shaped random Llama (30 layers), l = 100, one task, 32 examples per batch
with sources of 32..64 tokens (left-padded), 2 choices of 2 tokens (word + EOS) for rank
classification, 8 new tokens for generation (random weights never emit EOS early, so
every row decodes all 8), 2 threads, no grad.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

common.setup(threads=2)

import torch  # noqa: E402

from mptune.data import Feature, collate_choices, collate_source  # noqa: E402

N, L, NEW = 32, 100, 8


def main() -> None:
    a = common.standard_args(__doc__, repeats=3)
    layers, repeats = a.layers, a.repeats
    model = common.llama(layers)
    V, d = model.config.vocab_size, model.config.hidden_size
    fast, plain = common.backbone(model, fast=True), common.backbone(model, fast=False)
    assert fast.uses_fast_prefix
    rng = random.Random(0)
    feats = [Feature([2] + [rng.randrange(3, V) for _ in range(rng.randint(31, 63))], [], 0) for _ in range(N)]
    choices = [[[rng.randrange(3, V), 1], [rng.randrange(3, V), 1]] for _ in range(N)]
    rank_batch, _ = collate_choices(feats, choices, fast.kind, fast.pad_id)
    gen_batch = collate_source(feats, fast.kind, fast.pad_id)
    torch.manual_seed(1)
    table = torch.randn(1, L, d) * float(model.get_input_embeddings().weight.std())
    out = {}

    def rank(bb):
        def f():
            with torch.no_grad():
                out["rank"] = bb.score_choices(table, rank_batch)
        return f

    def gen(bb):
        def f():
            out["gen"] = bb.generate(table, gen_batch, NEW)
        return f

    fns = {"rank fast": rank(fast), "rank plain": rank(plain), "generate fast": gen(fast),
           "generate plain": gen(plain)}
    # same answers both ways
    fns["rank fast"]()
    r_fast = out["rank"]
    fns["rank plain"]()
    assert torch.allclose(r_fast, out["rank"], atol=1e-3, rtol=1e-4), (r_fast - out["rank"]).abs().max()
    fns["generate fast"]()
    g_fast = out["gen"]
    fns["generate plain"]()
    assert g_fast == out["gen"]
    runs = common.interleaved(fns, repeats, warmup=0)
    res = {"environment": common.environment(2), "repeats": repeats,
           "setting": {"model": f"SmolLM2-135M-shaped random Llama ({layers} layers)", "examples_per_batch": N,
                       "prompt_len": L, "source_tokens": "32..64", "choices": 2, "choice_tokens": 2,
                       "new_tokens": NEW},
           "methods": {n: dict(runs.summary(n), examples_per_s=N / runs.summary(n)["median_s"]) for n in fns},
           "ratios": {"rank: fast over plain throughput": runs.ratio("rank plain", "rank fast"),
                      "generate: fast over plain throughput": runs.ratio("generate plain", "generate fast"),
                      "fast: rank over generate throughput": runs.ratio("generate fast", "rank fast"),
                      "plain: rank over generate throughput": runs.ratio("generate plain", "rank plain")}}
    rows = [[n, m["median_s"], m["examples_per_s"], m["peak_rss_mib"]] for n, m in res["methods"].items()]
    md = "\n".join([
        "# Evaluation throughput: rank classification vs generation", "",
        f"{res['setting']['model']}, l = {L}, {N} examples per batch (sources 32..64 tokens, left-padded), "
        f"2 choices x 2 tokens, {NEW} generated tokens, CPU, 2 threads, {repeats} interleaved rounds (median); "
        "ratios are medians of per-round ratios. Fast and plain paths give the same scores (atol 1e-3) and the "
        "same generated tokens (checked before timing).", "",
        common.md_table(["method", "s/batch", "examples/s", "peak RSS over batch (MiB)"], rows), "",
        common.md_table(["ratio", "value"], [[k, v] for k, v in res["ratios"].items()]), ""])
    print(md)
    if a.quick:
        return
    common.write_results("eval_throughput", res, md)
    with common.Plot("eval_throughput") as plt:
        plt.figure(figsize=(5, 3))
        names = list(res["methods"])
        plt.barh(names, [res["methods"][n]["examples_per_s"] for n in names],
                 color=["tab:green", "tab:red", "tab:green", "tab:red"])
        plt.xlabel("examples / s (median)")
        plt.gca().invert_yaxis()


if __name__ == "__main__":
    main()
