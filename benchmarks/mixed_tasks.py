"""Mixed-task vs single-task batches: what a training step costs when the batch's rows
belong to K different tasks instead of one, for mptune's fast path, its plain path and
PEFT's multitask prompt tuning.

    python benchmarks/mixed_tasks.py           # ~8 min on 2 busy cores (3 rounds)
    python benchmarks/mixed_tasks.py --quick   # 2-layer smoke run (not committed)
    python benchmarks/mixed_tasks.py --render  # tables again from results/mixed_tasks.json, no timing

Setting: SmolLM2-135M-shaped random Llama (30 layers), batch 8 x 64 input tokens (4
targets), l = 100, 2 threads; K = 1 (single task) vs K = 2, 4, 8 (rows spread
round-robin over K tasks). The figure is cost(single) / cost(mixed) (1.0 = mixing is
free), given four ways: the median of per-round ratios and the ratio of the medians, in
wall time and in CPU time (the steadier one on shared cores), next to every per-round value.

The plain path and PEFT give every row its own prompt positions, so mixing is free
there (bound 1). The fast path computes the prompt once per distinct task: a mixed batch
adds (K - 1) x l prompt positions (forward + backward) to the B x S input positions, so
counting positions bounds its ratio at (B*S + l) / (B*S + K*l); the issue's ">= 0.95"
cannot hold for it once (K - 1) x l is a sizeable share of B x S. It still costs less
than the plain path at every K < B (at K = B it does the plain path's work).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

common.setup(threads=2)

import torch  # noqa: E402

import methods  # noqa: E402

B, S, T, L = 8, 64, 4, 100
KS = [2, 4, 8]
TARGET = 0.95  # the figure for "mixing is (nearly) free"


def bound(method: str, k: int) -> float:
    """single/mixed if every prompt and input position cost the same: the fast path adds (K - 1) x l positions."""
    return (B * S + L) / (B * S + k * L) if method == "fast" else 1.0


def summarise(runs: common.Runs) -> dict:
    """Every single/mixed figure of every (method, K) pair, from the rounds alone."""
    out = {}
    for method, ks in (("fast", KS), ("plain", [max(KS)]), ("PEFT MPT", [max(KS)])):
        for k in ks:
            single, mixed = f"{method} K=1", f"{method} K={k}"
            out[mixed] = {
                "single_s": common.med(runs.wall[single]), "mixed_s": common.med(runs.wall[mixed]),
                "per_round": runs.per_round(single, mixed), "per_round_cpu": runs.per_round(single, mixed, cpu=True),
                "single_over_mixed": runs.ratio(single, mixed),
                "single_over_mixed_cpu": runs.ratio(single, mixed, cpu=True),
                "ratio_of_medians": runs.ratio_of_medians(single, mixed),
                "ratio_of_medians_cpu": runs.ratio_of_medians(single, mixed, cpu=True),
                "bound": bound(method, k)}
    return out


def markdown(res: dict, runs: common.Runs) -> str:
    """The tables and what is met; the verdicts use the CPU-time ratio of medians."""
    rows, target, reached = [], {}, []  # (method, K) -> ratio >= TARGET; the K where the fast path reaches its bound
    for name, r in res["ratios"].items():
        method, k = name.rsplit(" K=", 1)
        cpu, k = r["ratio_of_medians_cpu"], int(k)
        target[method, k] = cpu >= TARGET
        if method == "fast" and cpu >= r["bound"]:
            reached.append(k)
        rows.append([method, k, r["single_s"], r["mixed_s"], " / ".join(f"{x:.2f}" for x in r["per_round"]),
                     r["single_over_mixed"], r["ratio_of_medians"], " / ".join(f"{x:.2f}" for x in r["per_round_cpu"]),
                     r["single_over_mixed_cpu"], cpu, r["bound"], "yes" if target[method, k] else "no",
                     ("yes" if k in reached else "no") if method == "fast" else "-"])
    fast_target = [k for (m, k), ok in target.items() if m == "fast" and ok]
    others = "; ".join(f"{m} at K = {k}: {'met' if ok else 'not met'}" for (m, k), ok in target.items() if m != "fast")
    at = lambda ks: "K = " + ", ".join(map(str, ks)) if ks else "no K"  # noqa: E731

    below = [k for k in KS if bound("fast", k) < TARGET]
    out_of_reach = (f" The fast path's bound is below {TARGET} at {at(below)} ("
                    + ", ".join(f"{bound('fast', k):.2f}" for k in below) + f"): with l = {L} and B*S = {B * S} the "
                    "target is out of its reach there.") if below else ""
    s, repeats = res["setting"], res["repeats"]
    spread = max(max(r["per_round"]) - min(r["per_round"]) for r in res["ratios"].values())
    vs = [[f"fast K={k}", runs.ratio(f"plain K={max(KS)}", f"fast K={k}"),
           runs.ratio_of_medians(f"plain K={max(KS)}", f"fast K={k}", cpu=True)] for k in [1, *KS]]
    return "\n".join([
        "# Mixed-task vs single-task batches", "",
        f"{s['model']}, batch {B} x {S} tokens ({T} targets), l = {L}, CPU, 2 threads, {repeats} interleaved "
        "rounds. `single/mixed` = cost of a single-task batch over the cost of a K-task batch (1.0 = mixing is "
        "free), each round's value and two summaries: the median of the per-round ratios and the ratio of the "
        "median times, in wall time and in CPU time. `bound` = (B*S + l) / (B*S + K*l): what the fast path can "
        "reach if a prompt position costs what an input position costs (it computes l prompt positions per "
        "distinct task); 1 for the plain path and PEFT, which compute l prompt positions per row whatever K. "
        f"The verdicts (`>= {TARGET}`: the issue's target; `>= bound`) use the CPU-time ratio of medians, the "
        f"steadiest figure on these shared cores (the per-round wall-time ratios of one pair span up to {spread:.2f}).",
        "",
        common.md_table(["method", "K", "single s", "mixed s", "per round (wall)", "median of rounds (wall)",
                         "ratio of medians (wall)", "per round (CPU)", "median of rounds (CPU)",
                         "ratio of medians (CPU)", "bound", f">= {TARGET}", ">= bound"], rows), "",
        "What is met (CPU-time ratio of medians):", "",
        f"* `>= bound` (the fast path's target): met at {at(reached)} (measured: {at(KS)}).",
        f"* `>= {TARGET}`: the fast path at {at(fast_target)} (measured: {at(KS)}); {others}.{out_of_reach} "
        "The plain path and PEFT compute l prompt positions per row at every K (bound 1, no verdict against it: their ratio is 1 "
        "up to noise), so mixing costs them nothing, but their steps cost more (table below).", "",
        f"At K = B = {B} every row has its own task: nothing to share, so mptune takes the plain path (the "
        f"`fast K={B}` row is that). The fast path against the plain path on the same mixed batches "
        f"(plain K={max(KS)} time / fast time):", "",
        common.md_table(["fast path batch", "plain / fast (median of rounds, wall)",
                         "plain / fast (ratio of medians, CPU)"], vs), ""])


def measure(layers: int, repeats: int) -> tuple[dict, common.Runs]:
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
    res = {"environment": common.environment(2), "repeats": repeats,
           "setting": {"model": f"SmolLM2-135M-shaped random Llama ({layers} layers)", "batch": B,
                       "input_tokens": S, "target_tokens": T, "prompt_len": L},
           "methods": {n: runs.summary(n) for n in fns}}
    return res, runs


def main() -> None:
    a = common.standard_args(__doc__, repeats=3, render=True)
    if a.render:  # the committed rounds, summarised again (the JSON keeps every round)
        res = json.loads((common.RESULTS / "mixed_tasks.json").read_text())
        runs = common.Runs.from_summaries(res["methods"])
    else:
        res, runs = measure(a.layers, a.repeats)
    res["ratios"] = summarise(runs)
    md = markdown(res, runs)
    print(md)
    if a.quick:
        return
    common.write_results("mixed_tasks", res, md)
    with common.Plot("mixed_tasks") as plt:
        ks = [1, *KS]
        plt.figure(figsize=(5, 3.4))
        plt.plot(ks, [common.med(runs.wall[f"fast K={k}"]) for k in ks], "o-", color="tab:green", label="mptune fast")
        for name, c in (("plain", "tab:red"), ("PEFT MPT", "tab:purple")):
            plt.plot([1, max(KS)], [common.med(runs.wall[f"{name} K={k}"]) for k in (1, max(KS))], "s--", color=c,
                     label=name)
        plt.xlabel("tasks per batch K (batch 8)")
        plt.ylabel("s/step (median)")
        plt.legend(fontsize=8)


if __name__ == "__main__":
    main()
