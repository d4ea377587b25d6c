"""GPU benchmark (run through benchmarks/gpu/run.sh): training step time and peak memory of
mptune (fast / plain path) vs PEFT prompt tuning and PEFT MPT vs the backbone on the input
alone, and evaluation throughput (rank classification vs generation), on one CUDA GPU.

Models (random weights, bf16, SDPA): a ~1B Llama (Llama-3.2-1B shape: 16 layers, d 2048,
32/8 heads, ffn 8192, vocab 128256) and a T5-base-shaped T5 (12+12 layers, d 768).
Training: batch 32 x 128 input tokens (4 targets), l = 100, 2 tasks per batch (and 1).
Evaluation: 64 examples, sources of 64..128 tokens, 2 choices x 2 tokens; 16 new tokens.
Timing: CUDA-synchronised wall time, methods interleaved over rounds, medians, ratios
as medians of per-round ratios. Memory: torch.cuda.max_memory_allocated during the call
minus the allocated memory before it.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402

import common  # noqa: E402
import methods  # noqa: E402

LLAMA_1B = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                tie_word_embeddings=True, rope_theta=500000.0)
T5_BASE = dict(d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_decoder_layers=12, num_heads=12)


def measure(fn, device) -> tuple[float, int]:
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() - base) if cuda else 0
    return dt, peak


def interleaved(fns: dict, repeats: int, warmup: int, device) -> dict:
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            measure(fns[n], device)
    wall = {n: [] for n in names}
    mem = {n: [] for n in names}
    for r in range(repeats):
        for n in names[r % len(names):] + names[: r % len(names)]:
            dt, pk = measure(fns[n], device)
            wall[n].append(dt)
            mem[n].append(pk)
    return {"wall": wall, "mem": mem}


def ratio(runs, a, b) -> float:
    return statistics.median(x / y for x, y in zip(runs["wall"][a], runs["wall"][b]))


def summary(runs, n) -> dict:
    return {"median_s": statistics.median(runs["wall"][n]),
            "peak_mib": statistics.median(runs["mem"][n]) / 2**20, "wall_s": runs["wall"][n]}


def train(kind: str, cfg: dict, device, dtype, repeats: int, warmup: int) -> dict:
    B, S, T, L, K = cfg["B"], cfg["S"], 4, cfg["l"], 2
    if kind == "causal":
        model = common.llama(attn="sdpa", dtype=dtype, **cfg["model"]).to(device)
        batch = common.causal_batch(B, S, T, K, model.config.vocab_size, device=device)
        single = dict(batch, task_index=torch.zeros_like(batch["task_index"]))
        fns = {"mptune fast": methods.mptune_step(model, batch, L, K, fast=True),
               "mptune fast, 1 task/batch": methods.mptune_step(model, single, L, K, fast=True),
               "mptune plain": methods.mptune_step(model, batch, L, K, fast=False)}
        ref = "mptune fast"
    else:
        model = common.t5(attn="sdpa", dtype=dtype, **cfg["model"]).to(device)
        batch = common.seq2seq_batch(B, S, T, K, model.config.vocab_size, device=device)
        fns = {"mptune (plain: T5)": methods.mptune_step(model, batch, L, K, fast=True)}
        ref = "mptune (plain: T5)"
    fns["floor (input only)"] = methods.floor_step(model, batch)
    fns.update(methods.peft_steps(model, batch, L, K))
    runs = interleaved(fns, repeats, warmup, device)
    out = {n: dict(summary(runs, n), x_floor=ratio(runs, n, "floor (input only)"), x_ref=ratio(runs, n, ref))
           for n in fns}
    del model, fns
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"reference": ref, "methods": out, "setting": {k: v for k, v in cfg.items() if k != "model"}}


def evaluation(cfg: dict, device, dtype, repeats: int, warmup: int) -> dict:
    from mptune.data import Feature, collate_choices, collate_source

    model = common.llama(attn="sdpa", dtype=dtype, **cfg["model"]).to(device)
    V, d = model.config.vocab_size, model.config.hidden_size
    fast, plain = common.backbone(model, fast=True), common.backbone(model, fast=False)
    rng = random.Random(0)
    N, lo, hi = cfg["eval_N"], cfg["eval_src"][0], cfg["eval_src"][1]
    feats = [Feature([2] + [rng.randrange(3, V) for _ in range(rng.randint(lo - 1, hi - 1))], [], 0) for _ in range(N)]
    choices = [[[rng.randrange(3, V), 1], [rng.randrange(3, V), 1]] for _ in range(N)]
    rb, _ = collate_choices(feats, choices, fast.kind, fast.pad_id)
    gb = collate_source(feats, fast.kind, fast.pad_id)
    rb = {k: v.to(device) for k, v in rb.items()}
    gb = {k: v.to(device) for k, v in gb.items()}
    table = (torch.randn(1, cfg["l"], d) * 0.02).to(device)
    new = cfg["new_tokens"]
    fns = {"rank fast": lambda: fast.score_choices(table, rb), "rank plain": lambda: plain.score_choices(table, rb),
           "generate fast": lambda: fast.generate(table, gb, new),
           "generate plain": lambda: plain.generate(table, gb, new)}
    runs = interleaved(fns, repeats, warmup, device)
    out = {n: dict(summary(runs, n), examples_per_s=N / summary(runs, n)["median_s"]) for n in fns}
    return {"methods": out, "ratios": {"rank fast/plain throughput": ratio(runs, "rank plain", "rank fast"),
                                       "generate fast/plain throughput": ratio(runs, "generate plain", "generate fast")},
            "setting": {"examples": N, "source_tokens": cfg["eval_src"], "new_tokens": new, "l": cfg["l"]}}


def markdown(res: dict) -> str:
    out = ["# GPU benchmark", "", f"GPU: **{res['gpu']}**; torch {res['torch']}, transformers {res['transformers']}, "
           f"peft {res['peft']}; bf16 weights, SDPA; {res['repeats']} interleaved rounds after {res['warmup']} warm-up "
           "(median). Peak memory: max allocated during the call minus allocated before it.", ""]
    for kind, r in res["train"].items():
        out += [f"## training step, {kind}: {res['models'][kind]}", "", f"setting: {r['setting']}", "",
                common.md_table(["method", "s/step", "x floor", f"x {r['reference']}", "peak MiB"],
                                [[n, m["median_s"], m["x_floor"], m["x_ref"], m["peak_mib"]]
                                 for n, m in r["methods"].items()]), ""]
    e = res["eval"]
    out += [f"## evaluation throughput, {res['models']['causal']}", "", f"setting: {e['setting']}", "",
            common.md_table(["method", "s/batch", "examples/s"],
                            [[n, m["median_s"], m["examples_per_s"]] for n, m in e["methods"].items()]), "",
            common.md_table(["ratio", "value"], [[k, v] for k, v in e["ratios"].items()]), ""]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="tiny models on CPU to check the script; writes nothing")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    a = ap.parse_args()
    import peft

    from mptune.utils import environment

    if a.dry_run:
        device, dtype, repeats, warmup = torch.device("cpu"), torch.bfloat16, 1, 1
        cfgs = {"causal": dict(model=dict(LLAMA_1B, num_hidden_layers=2, hidden_size=256, intermediate_size=512,
                                          num_attention_heads=4, num_key_value_heads=2, vocab_size=1024),
                               B=4, S=32, l=10, eval_N=4, eval_src=(8, 16), new_tokens=4),
                "seq2seq": dict(model=dict(T5_BASE, num_layers=2, num_decoder_layers=2, d_model=128, d_ff=256,
                                           num_heads=4, d_kv=32, vocab_size=1024), B=4, S=32, l=10)}
        gpu = "none (dry run on CPU)"
    else:
        if not torch.cuda.is_available():
            sys.exit("benchmarks/gpu: no CUDA device; use --dry-run to check the script on CPU")
        device, dtype, repeats, warmup = torch.device("cuda"), torch.bfloat16, a.repeats, a.warmup
        cfgs = {"causal": dict(model=LLAMA_1B, B=32, S=128, l=100, eval_N=64, eval_src=(64, 128), new_tokens=16),
                "seq2seq": dict(model=T5_BASE, B=32, S=128, l=100)}
        gpu = torch.cuda.get_device_name(0)
    res = {"gpu": gpu, **environment(), "peft": peft.__version__,  # environment: versions and device, as stage.json
           "repeats": repeats, "warmup": warmup, "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "models": {"causal": "~1B Llama (Llama-3.2-1B shape), random weights",
                      "seq2seq": "T5-base-shaped T5, random weights"}, "train": {}}
    for kind in ("causal", "seq2seq"):
        print(f"== training step, {kind}", flush=True)
        res["train"][kind] = train(kind, cfgs[kind], device, dtype, repeats, warmup)
    print("== evaluation", flush=True)
    res["eval"] = evaluation(cfgs["causal"], device, dtype, repeats, warmup)
    md = markdown(res)
    print(md)
    if a.dry_run:
        return
    out = HERE.parent / "results"
    out.mkdir(exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / "gpu.md").write_text(md)
    print(f"wrote {out / 'gpu.json'} and gpu.md")


if __name__ == "__main__":
    main()
