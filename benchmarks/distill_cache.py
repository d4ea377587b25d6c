"""Distillation with the teacher cache: step time with the teachers run live (every epoch)
vs filling the cache (the first epoch) vs reading it (every later epoch), and the cache size.

    python benchmarks/distill_cache.py          # ~6 min on 2 busy cores
    python benchmarks/distill_cache.py --quick  # 2-layer smoke run (not committed)

One MPT distillation step as recipes/distill.py runs it: the student (shared prompt x
rank-1 task matrices) forward with hidden states, the teachers' outputs (live: the frozen
backbone with the teacher prompt table, no grad; cached: read from the memory-mapped
files), L_PLM + KL(teacher || student) + hidden MSE, backward, AdamW step. Both use the
fast prefix path. SmolLM2-135M-shaped random Llama (30 layers), batch 8 x 64 tokens
(4 targets), l = 100, 2 tasks per batch, top-k = 64 (+ remaining mass), hidden states
float32, 2 threads.

Per-epoch figures: epoch 1 costs fill/live of a live epoch, every later epoch read/live;
an E-epoch run costs (fill + (E-1) read) / (E live).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

common.setup(threads=2)

import torch  # noqa: E402

from mptune.data import Feature, collate  # noqa: E402
from mptune.losses import HiddenMSE, LogitKL, TokenNLL, TopKLogitKL  # noqa: E402
from mptune.teacher_cache import open_for_distillation  # noqa: E402

import methods  # noqa: E402

B, S, T, L, K, TOPK = 8, 64, 4, 100, 2, 64


def main() -> None:
    a = common.standard_args(__doc__, repeats=4)
    layers, repeats = a.layers, a.repeats
    model = common.llama(layers)
    V, d = model.config.vocab_size, model.config.hidden_size
    bb = common.backbone(model)
    assert bb.uses_fast_prefix
    g = torch.Generator().manual_seed(0)
    src = torch.randint(3, V, (B, S - T), generator=g).tolist()
    tgt = torch.randint(3, V, (B, T), generator=g).tolist()
    chunks = 2 + repeats  # chunk 0: read; chunks 1..: one fresh chunk per fill call
    feats = [Feature(src[i % B], tgt[i % B], i % K) for i in range(B * chunks)]
    batch = collate(feats[:B], bb.kind, bb.pad_id)
    std = float(model.get_input_embeddings().weight.std())
    torch.manual_seed(2)
    teachers = torch.randn(K, L, d) * std
    student = methods.mpt_prompt(L, d, K, std)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-3)
    nll, kl, topk_kl, mse = TokenNLL(), LogitKL(1.0), TopKLogitKL(1.0), HiddenMSE()
    tmp = tempfile.TemporaryDirectory()
    cache = open_for_distillation(Path(tmp.name) / "tc", feats, teachers, bb, topk=TOPK, temperature=1.0,
                                  logits=True, hidden=True)
    teacher = lambda b: bb(teachers, b, hidden=True)  # noqa: E731
    next_chunk = [1]

    def step(mode: str):
        s = bb(student(), batch, hidden=True)
        loss = nll(s)
        if mode == "live":
            with torch.no_grad():
                t = teacher(batch)
            loss = loss + kl(s.logits, t.logits, s.labels) + mse(s.hidden, t.hidden, s.labels)
        else:
            if mode == "fill":
                c = next_chunk[0]
                next_chunk[0] += 1
                idx = list(range(c * B, (c + 1) * B))
                assert len(cache.missing(idx)) == B
            else:
                idx = list(range(B))
                assert not cache.missing(idx)
            t = cache.lookup(idx, batch, teacher)
            loss = loss + topk_kl(s.logits, t.logp, s.labels, t.index, t.log_rest) + mse(s.hidden, t.hidden, s.labels)
        loss.mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    cache.lookup(list(range(B)), batch, teacher)  # chunk 0, read by "cache read"
    fns = {"teachers live": lambda: step("live"), "cache fill (epoch 1)": lambda: step("fill"),
           "cache read (epochs 2+)": lambda: step("read")}
    runs = common.interleaved(fns, repeats)
    live, fill, read = "teachers live", "cache fill (epoch 1)", "cache read (epochs 2+)"
    per_ex = cache.nbytes / cache.n
    res = {"environment": common.environment(2), "repeats": repeats,
           "setting": {"model": f"SmolLM2-135M-shaped random Llama ({layers} layers)", "batch": B,
                       "input_tokens": S, "target_tokens": T, "prompt_len": L, "tasks_in_batch": K, "topk": TOPK,
                       "hidden_dtype": "float32"},
           "methods": {n: runs.summary(n) for n in fns},
           "ratios": {"live / read (speedup of epochs 2+)": runs.ratio(live, read),
                      "live / read, CPU time": runs.ratio(live, read, cpu=True),
                      "fill / live (cost of epoch 1)": runs.ratio(fill, live),
                      "fill / live, CPU time": runs.ratio(fill, live, cpu=True)},
           "cache": {"bytes_per_target_token": per_ex / T, "bytes_per_example": per_ex,
                     "bytes_per_target_token_full_vocab": V * 4 + d * 4,
                     "disk_bytes_after_fill": cache.disk_bytes(), "examples_filled": cache.filled}}
    sp = res["ratios"]["live / read (speedup of epochs 2+)"]
    fl = res["ratios"]["fill / live (cost of epoch 1)"]
    res["ratios"]["10-epoch run speedup"] = 10 / (fl + 9 / sp)
    rows = [[n, m["median_s"], m["median_cpu_s"], m["peak_rss_mib"]] for n, m in res["methods"].items()]
    c = res["cache"]
    md = "\n".join([
        "# Distillation: teacher cache vs live teachers", "",
        f"{res['setting']['model']}, batch {B} x {S} tokens ({T} targets), l = {L}, {K} tasks per batch, "
        f"top-{TOPK} log-probs + remaining mass, float32 hidden states, CPU, 2 threads, {repeats} interleaved "
        "rounds (median); ratios are medians of per-round ratios.", "",
        common.md_table(["step", "s/step", "CPU s/step", "peak RSS over step (MiB)"], rows), "",
        common.md_table(["ratio", "value"], [[k, v] for k, v in res["ratios"].items()]), "",
        f"Cache size: {c['bytes_per_target_token']:.0f} bytes per target token "
        f"(top-{TOPK}: {TOPK} x 4 B log-probs + {TOPK} x 4 B ids + 4 B remaining mass; {d} x 4 B hidden state), "
        f"{c['bytes_per_example'] / 1024:.1f} KiB per example with {T} target tokens; storing the whole "
        f"{V}-token distribution instead would take {c['bytes_per_target_token_full_vocab'] / 1024:.0f} KiB per "
        "target token. Files are sparse: disk use grows as examples are filled "
        f"({c['disk_bytes_after_fill'] / 1024:.0f} KiB after {c['examples_filled']} examples here).", ""])
    print(md)
    tmp.cleanup()
    if a.quick:
        return
    common.write_results("distill_cache", res, md)
    with common.Plot("distill_cache") as plt:
        plt.figure(figsize=(5, 2.8))
        names = list(res["methods"])
        plt.barh(names, [res["methods"][n]["median_s"] for n in names], color=["tab:red", "tab:orange", "tab:green"])
        plt.xlabel("seconds per distillation step (median)")
        plt.gca().invert_yaxis()


if __name__ == "__main__":
    main()
