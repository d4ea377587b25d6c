"""Mixed-task vs single-task batches: what a training step costs when the batch's rows
belong to K different tasks instead of one, for mptune's fast path, its plain path and
PEFT's multitask prompt tuning.

    python benchmarks/mixed_tasks.py          # ~8 min on 2 busy cores
    python benchmarks/mixed_tasks.py --quick  # 2-layer smoke run (not committed)

Setting of the issue: SmolLM2-135M-shaped random Llama (30 layers), batch 8 x 64 input
tokens (4 targets), l = 100, 2 threads; K = 1 (single task) vs K = 2, 4, 8 (rows spread
round-robin over K tasks). The figure is cost(single) / cost(mixed) per round (1.0 =
mixing is free; the issue's target is >= 0.95), median over rounds.

The plain path and PEFT give every row its own prompt positions, so mixing is free
there. The fast path computes the prompt once per distinct task: a mixed batch adds
(K - 1) x l prompt positions (forward + backward) to the B x S input positions, so its
ratio is about (B*S + l) / (B*S + K*l) in token terms; it still costs less than the
plain path at every K <= B (at K = B it does the plain path's work).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

common.setup(threads=2)

import torch  # noqa: E402

import methods  # noqa: E402

B, S, T, L = 8, 64, 4, 100
KS = [2, 4, 8]


def main() -> None:
    a = common.standard_args(__doc__, repeats=3)
    layers, repeats = a.layers, a.repeats
    model = common.llama(layers)
    V = model.config.vocab_size
    batches = {k: common.causal_batch(B, S, T, k, V) for k in [1, *KS]}
    fns = {}
    for k in [1, *KS]:
        fns[f"fast K={k}"] = methods.mptune_step(model, batches[k], L, max(KS), fast=True)
    for k in (1, max(KS)):
        fns[f"plain K={k}"] = methods.mptune_step(model, batches[k], L, max(KS), fast=False)
    from peft import MultitaskPromptTuningConfig, get_peft_model

    d = model.config.hidden_size
    mpt = get_peft_model(model, MultitaskPromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=L, token_dim=d,
                                                            num_transformer_submodules=1, num_tasks=max(KS),
                                                            num_ranks=1, prompt_tuning_init="RANDOM"))
    params = [p for p in mpt.parameters() if p.requires_grad]
    for k in (1, max(KS)):
        b = batches[k]
        full = torch.full_like(b["input_ids"], -100)
        full[:, -T:] = b["labels"]
        fns[f"PEFT MPT K={k}"] = methods.step_fn(
            lambda b=b, full=full: mpt(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=full,
                                       task_ids=b["task_index"]).loss, params)
    runs = common.interleaved(fns, repeats)
    rows, res = [], {"environment": common.environment(2), "repeats": repeats,
                     "setting": {"model": f"SmolLM2-135M-shaped random Llama ({layers} layers)", "batch": B,
                                 "input_tokens": S, "target_tokens": T, "prompt_len": L},
                     "methods": {n: runs.summary(n) for n in fns}, "ratios": {}}
    for method, ks in (("fast", KS), ("plain", [max(KS)]), ("PEFT MPT", [max(KS)])):
        for k in ks:
            single, mixed = f"{method} K=1", f"{method} K={k}"
            r = {"single_over_mixed": runs.ratio(single, mixed), "single_over_mixed_cpu": runs.ratio(single, mixed, cpu=True),
                 "single_s": runs.summary(single)["median_s"], "mixed_s": runs.summary(mixed)["median_s"],
                 "token_model": (B * S + L) / (B * S + k * L) if method == "fast" else 1.0}
            res["ratios"][mixed] = r
            rows.append([method, k, r["single_s"], r["mixed_s"], r["single_over_mixed"], r["single_over_mixed_cpu"],
                         r["token_model"]])
    vs = [["fast K=%d" % k, runs.ratio(f"plain K={max(KS)}", f"fast K={k}")] for k in [1, *KS]]
    md = "\n".join([
        "# Mixed-task vs single-task batches", "",
        f"{res['setting']['model']}, batch {B} x {S} tokens ({T} targets), l = {L}, CPU, 2 threads, "
        f"{repeats} interleaved rounds (median). `single/mixed` = cost of a single-task batch over the cost of "
        "a K-task batch (1.0 = mixing is free; target >= 0.95), median of per-round ratios (wall; CPU time next "
        "to it). `token model` = (B*S + l) / (B*S + K*l), the fast path's expected ratio from positions computed.",
        "",
        common.md_table(["method", "K", "single s", "mixed s", "single/mixed", "single/mixed (CPU)", "token model"],
                        rows), "",
        f"At K = B = {B} every row has its own task: nothing to share, so mptune takes the plain path (the "
        "`fast K=8` row is that). The fast path against the plain path on the same mixed batches "
        "(plain K=8 time / fast time):", "",
        common.md_table(["fast path batch", "plain / fast"], vs), ""])
    print(md)
    if a.quick:
        return
    common.write_results("mixed_tasks", res, md)
    with common.Plot("mixed_tasks") as plt:
        ks = [1, *KS]
        plt.figure(figsize=(5, 3.4))
        plt.plot(ks, [runs.summary(f"fast K={k}")["median_s"] for k in ks], "o-", color="tab:green", label="mptune fast")
        for name, c in (("plain", "tab:red"), ("PEFT MPT", "tab:purple")):
            plt.plot([1, max(KS)], [runs.summary(f"{name} K={k}")["median_s"] for k in (1, max(KS))], "s--", color=c,
                     label=name)
        plt.xlabel("tasks per batch K (batch 8)")
        plt.ylabel("s/step (median)")
        plt.legend(fontsize=8)


if __name__ == "__main__":
    main()
