"""Training step time and peak memory: mptune (fast path, plain path) vs PEFT prompt tuning
and PEFT multitask prompt tuning vs the backbone's forward + backward over the input alone.

    python benchmarks/train_step.py            # both backbones, ~10 min on 2 busy cores
    python benchmarks/train_step.py --quick    # 4-layer smoke run (not committed)

Causal: SmolLM2-135M-shaped random Llama (30 layers, d 576, 9 heads / 3 kv heads, ffn 1536,
vocab 49152), batch 8 x 64 input tokens (the last 4 are targets), l = 100 prompt tokens,
2 tasks per batch (MPT's minimum; also 1 task, as in single-task prompt tuning, which
is what PEFT prompt tuning does), 2 threads. Seq2seq: T5-small-shaped random T5, the
same batch as encoder input, 4 target tokens (mptune's fast path does not apply to T5).

Every method does a full training step: forward, loss, backward, AdamW step on the prompt.
mptune and the floor compute logits only where targets are (logits_to_keep); PEFT is run
as its users run it (labels=, full-sequence logits), and once more with logits_to_keep so
that the lm-head share of the gap is visible.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

common.setup(threads=2)

import torch  # noqa: E402

import methods  # noqa: E402

B, S, T, L, K = 8, 64, 4, 100, 2


def causal_methods(layers: int):
    model = common.llama(layers)
    d, V = model.config.hidden_size, model.config.vocab_size
    batch = common.causal_batch(B, S, T, K, V)
    single = dict(batch, task_index=torch.zeros_like(batch["task_index"]))
    fns = {"mptune fast": methods.mptune_step(model, batch, L, K, fast=True),
           "mptune fast, 1 task/batch": methods.mptune_step(model, single, L, K, fast=True),
           "mptune plain": methods.mptune_step(model, batch, L, K, fast=False),
           "floor (input only)": methods.floor_step(model, batch),
           **methods.peft_steps(model, batch, L, K)}
    return fns, {"model": "SmolLM2-135M-shaped random Llama", "layers": layers, "d": d, "vocab": V}


def seq2seq_methods(layers: int):
    model = common.t5(num_layers=layers, num_decoder_layers=layers)
    d, V = model.config.d_model, model.config.vocab_size
    batch = common.seq2seq_batch(B, S, T, K, V)
    fns = {"mptune (plain: T5)": methods.mptune_step(model, batch, L, K, fast=True),
           "floor (input only)": methods.floor_step(model, batch),
           **methods.peft_steps(model, batch, L, K)}
    return fns, {"model": "T5-small-shaped random T5", "layers": f"{layers}+{layers}", "d": d, "vocab": V}


def run_one(kind: str, layers: int, repeats: int) -> dict:
    print(f"== {kind}")
    fns, info = causal_methods(layers) if kind == "causal" else seq2seq_methods(layers)
    runs = common.interleaved(fns, repeats)
    ref = "mptune fast" if kind == "causal" else "mptune (plain: T5)"
    floor = "floor (input only)"
    rows = {}
    for n in fns:
        rows[n] = dict(runs.summary(n), ratio_to_floor=runs.ratio(n, floor), slowdown_vs_mptune=runs.ratio(n, ref),
                       cpu_slowdown_vs_mptune=runs.ratio(n, ref, cpu=True))
    return {"setting": dict(info, batch=B, input_tokens=S, target_tokens=T, prompt_len=L, tasks_in_batch=K),
            "reference": ref, "methods": rows}


def markdown(res: dict, repeats: int) -> str:
    out = ["# Training step: mptune vs PEFT vs the backbone on the input alone", "",
           f"CPU, 2 threads, {repeats} interleaved rounds (median); ratios are medians of per-round ratios. "
           "Memory: peak resident set during the step above the resident set before it (VmHWM reset via "
           "/proc/self/clear_refs after malloc_trim), median over the timed calls.", ""]
    for kind, r in res["backbones"].items():
        s = r["setting"]
        out += [f"## {kind}: {s['model']} ({s['layers']} layers, d={s['d']}, vocab {s['vocab']})", "",
                f"batch {s['batch']} x {s['input_tokens']} input tokens ({s['target_tokens']} target), "
                f"l = {s['prompt_len']}, {s['tasks_in_batch']} tasks per batch.", ""]
        rows = [[n, m["median_s"], m["ratio_to_floor"], m["slowdown_vs_mptune"], m["cpu_slowdown_vs_mptune"],
                 m["peak_rss_mib"]] for n, m in r["methods"].items()]
        out += [common.md_table(["method", "s/step (median)", "x floor", f"x {r['reference']}",
                                 f"x {r['reference']} (CPU time)", "peak RSS over step (MiB)"], rows), ""]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="4-layer models, 2 rounds, results not written")
    ap.add_argument("--only", choices=["causal", "seq2seq"])
    a = ap.parse_args()
    layers = {"causal": 4 if a.quick else 30, "seq2seq": 2 if a.quick else 6}
    repeats = 2 if a.quick else a.repeats
    res = {"environment": common.environment(2), "repeats": repeats, "backbones": {}}
    for kind in ("causal", "seq2seq"):
        if a.only in (None, kind):
            res["backbones"][kind] = run_one(kind, layers[kind], repeats)
    md = markdown(res, repeats)
    print(md)
    if a.quick or a.only:
        return
    common.write_results("train_step", res, md)
    with common.Plot("train_step") as plt:
        fig, axes = plt.subplots(1, len(res["backbones"]), figsize=(6 * len(res["backbones"]), 3.6))
        for ax, (kind, r) in zip(axes, res["backbones"].items()):
            names = list(r["methods"])
            ax.barh(names, [r["methods"][n]["median_s"] for n in names], color="tab:blue")
            ax.set_xlabel("seconds per training step (median)")
            ax.set_title(f"{kind}: {r['setting']['model']}", fontsize=9)
            ax.invert_yaxis()


if __name__ == "__main__":
    main()
