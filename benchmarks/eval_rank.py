"""Rank-classification evaluation on the real SmolLM2-135M-Instruct: old code vs this checkout.

    python benchmarks/eval_rank.py                 # old = git ref main, 3 rounds, 1 and 2 threads
    python benchmarks/eval_rank.py --old-ref f657050 --rounds 3 --threads 1 2
    python benchmarks/eval_rank.py --quick         # 1 round, 64 examples, 2 threads (not committed)

What runs: `mptune.evaluation.predict` on vader_tweets (VADER tweets, binary: negative /
positive; 200 test examples, sources ~37 tokens, 19..66), a random prompt of l = 8 (std of
the embeddings, seed 0), batch 32, fp32, CPU, no grad. Each measurement is a fresh
subprocess importing one source tree (the old one unpacked from `git archive <old-ref>`),
so old and new run the same script against different code:

  old fast   the old ref, model.fast_prefix=true (the default)
  old plain  the old ref, model.fast_prefix=false: one [prompt ; input ; label] row per choice
  new        this checkout (default settings)

Methods run interleaved in rounds (the order rotates), so machine load hits them alike.
Before timing, each child scores the first 32 examples through the same public calls
(collate_choices + Backbone.score_choices) and predicts all of them; the parent checks
every method's scores against the old plain ones (allclose, atol 1e-5) and that the
predictions are identical. Wall time of `predict` (after one warm-up batch) and the
process's CPU time (all threads) are reported; the model load is not timed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
TASK, LENGTH, BATCH = "vader_tweets", 8, 32


def child(a) -> None:
    """One measurement, importing mptune from a.src."""
    sys.path.insert(0, a.src)
    import common

    common.setup(threads=a.threads[0])
    import torch

    from mptune.backbone import load_backbone
    from mptune.config import ModelConfig
    from mptune.data import Feature, TextEncoder, collate_choices
    from mptune.evaluation import predict
    from mptune.tasks import get_task

    import mptune

    assert Path(mptune.__file__).resolve().is_relative_to(Path(a.src).resolve()), mptune.__file__
    bb = load_backbone(ModelConfig(name=a.model, fast_prefix=a.fast))
    task = get_task(TASK)
    examples = task.load("test", data_dir=a.data_dir, limit=a.examples)
    enc = TextEncoder(bb.tokenizer, bb.kind)
    emb = bb.model.get_input_embeddings().weight
    table = torch.randn(1, LENGTH, bb.hidden_size, generator=torch.Generator().manual_seed(0)) * float(emb.std())
    exs = examples[:BATCH]
    batch, _ = collate_choices([Feature(enc.source(e.source), [], 0) for e in exs],
                               [[enc.target(c) for c in task.choices(e)] for e in exs], bb.kind, bb.pad_id)
    scores = bb.score_choices(table, batch).tolist()
    run = lambda xs: predict(bb, lambda: table, task, xs, enc, batch_size=BATCH, progress=False)  # noqa: E731
    run(exs)  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    preds = run(examples)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    lengths = [len(enc.source(e.source)) for e in examples]
    Path(a.out).write_text(json.dumps({"wall_s": wall, "cpu_s": cpu, "scores": scores, "predictions": preds,
                                       "examples": len(examples), "source_tokens": lengths,
                                       "fast_prefix_used": bb.uses_fast_prefix}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--old-ref", default="main")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--examples", type=int, default=200)
    p.add_argument("--model", default=str(Path.home() / ".cache/mptune/models/SmolLM2-135M-Instruct"))
    p.add_argument("--data-dir", default=os.environ.get("MPTUNE_DATA_DIR", str(REPO.parent / "shared" / "data")))
    p.add_argument("--quick", action="store_true")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--src", help=argparse.SUPPRESS)
    p.add_argument("--fast", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        return child(a)
    if a.quick:
        a.rounds, a.examples, a.threads = 1, 64, [2]
    import common

    common.setup(threads=max(a.threads))
    env = common.environment(max(a.threads))  # load average captured here, before any measurement
    old_commit = subprocess.run(["git", "rev-parse", a.old_ref], cwd=REPO, capture_output=True, text=True,
                                check=True).stdout.strip()
    new_commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                check=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "src"], cwd=REPO, capture_output=True,
                                text=True).stdout.strip())
    with tempfile.TemporaryDirectory() as tmp:
        old_src = Path(tmp) / "old"
        old_src.mkdir()
        tar = subprocess.run(["git", "archive", old_commit, "src"], cwd=REPO, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old_src)], input=tar, check=True)
        methods = {"old fast": (old_src / "src", 1), "old plain": (old_src / "src", 0), "new": (REPO / "src", 1)}
        res: dict = {}
        for th in a.threads:
            names = list(methods)
            for r in range(a.rounds):
                for name in names[r % len(names):] + names[: r % len(names)]:
                    src, fast = methods[name]
                    out = Path(tmp) / "out.json"
                    cmd = [sys.executable, __file__, "--child", "--src", str(src), "--fast", str(fast), "--threads",
                           str(th), "--examples", str(a.examples), "--model", a.model, "--data-dir", a.data_dir,
                           "--out", str(out)]
                    load = list(os.getloadavg())
                    subprocess.run(cmd, check=True, env=dict(os.environ, PYTHONPATH=str(src)))
                    got = json.loads(out.read_text())
                    got["load_average_before"] = load
                    res.setdefault(th, {}).setdefault(name, []).append(got)
                    print(f"threads {th} round {r} {name}: {got['wall_s']:.1f} s wall, {got['cpu_s']:.1f} s CPU",
                          flush=True)
    # same answers: every run's predictions identical; scores of the first batch allclose (fp32: atol and
    # rtol 1e-5; 30 layers in a different order of operations move a score of ~-10 by a few 1e-5)
    first = {n: per[n][0]["scores"] for per in res.values() for n in per}
    diff = {f"{x} vs {y}": max(abs(u - v) for u, v in zip(first[x], first[y]))
            for x, y in (("new", "old fast"), ("new", "old plain"), ("old fast", "old plain"))}
    for per in res.values():
        for runs in per.values():
            for got in runs:
                for u, v in zip(got["scores"], first["old plain"]):
                    assert abs(u - v) <= 1e-5 + 1e-5 * abs(v), f"scores differ: {u} vs {v}"
                assert got["predictions"] == res[a.threads[0]]["old plain"][0]["predictions"], "predictions differ"
    assert all(g["fast_prefix_used"] for t in res.values() for n in ("old fast", "new") for g in t[n])
    ref = res[a.threads[0]]["old plain"][0]

    def summary(runs):
        wall, cpu = [g["wall_s"] for g in runs], [g["cpu_s"] for g in runs]
        return {"median_wall_s": statistics.median(wall), "median_cpu_s": statistics.median(cpu),
                "examples_per_s": a.examples / statistics.median(wall),
                "examples_per_cpu_s": a.examples / statistics.median(cpu), "wall_s": wall, "cpu_s": cpu,
                "load_average_before": [g["load_average_before"] for g in runs]}

    def ratios(per, base):
        new, old = per["new"], per[base]
        return {"ratio_of_medians": statistics.median(g["wall_s"] for g in old)
                / statistics.median(g["wall_s"] for g in new),
                "median_of_per_round_ratios": statistics.median(o["wall_s"] / n["wall_s"] for o, n in zip(old, new)),
                "cpu_time_ratio": statistics.median(g["cpu_s"] for g in old)
                / statistics.median(g["cpu_s"] for g in new)}

    lengths = ref["source_tokens"]
    command = "python benchmarks/eval_rank.py " + " ".join(sys.argv[1:])
    out = {"command": command.strip(), "environment": env, "old_ref": a.old_ref, "old_commit": old_commit,
           "new_commit": new_commit + (" + uncommitted changes in src/" if dirty else ""),
           "setting": {"model": Path(a.model).name, "task": TASK, "split": "test", "examples": a.examples,
                       "source_tokens": {"mean": statistics.mean(lengths), "min": min(lengths), "max": max(lengths)},
                       "choices": 2, "prompt_len": LENGTH, "batch_size": BATCH, "dtype": "float32",
                       "rounds": a.rounds},
           "check": {"max_abs_score_diff_first_batch": diff, "predictions_identical": True},
           "threads": {str(th): {"methods": {n: summary(runs) for n, runs in per.items()},
                                 "new_over": {b: ratios(per, b) for b in ("old fast", "old plain")}}
                       for th, per in res.items()}}
    rows, rrows = [], []
    for th, t in out["threads"].items():
        rows += [[th, n, m["median_wall_s"], m["examples_per_s"], m["median_cpu_s"], m["examples_per_cpu_s"]]
                 for n, m in t["methods"].items()]
        rrows += [[th, f"new over {b}", r["ratio_of_medians"], r["median_of_per_round_ratios"], r["cpu_time_ratio"]]
                  for b, r in t["new_over"].items()]
    L = out["setting"]["source_tokens"]
    md = "\n".join([
        "# Rank-classification evaluation: old vs new (real SmolLM2-135M-Instruct)", "",
        f"`{out['command']}`, old = `{a.old_ref}` ({old_commit[:7]}), new = {out['new_commit'][:7]}"
        f"{' + uncommitted src/' if dirty else ''}; {env['cpu']}, {env['cores_visible']} cores visible, "
        f"load average at start {', '.join(f'{x:.2f}' for x in env['load_average_at_start'])} ({env['date']}).", "",
        f"`evaluation.predict` on {TASK} ({a.examples} test examples, sources {L['mean']:.1f} tokens on average, "
        f"{L['min']}..{L['max']}; 2 choices), random prompt l = {LENGTH}, batch {BATCH}, fp32, CPU, no grad; "
        f"each run a fresh process, {a.rounds} interleaved rounds, medians. Same predictions everywhere; largest "
        "score difference on the first batch (scores are sums of log-probs): "
        + ", ".join(f"{k} {v:.1e}" for k, v in diff.items()) + ".", "",
        common.md_table(["threads", "method", "s (wall)", "examples/s", "s (CPU)", "examples per CPU-s"], rows), "",
        common.md_table(["threads", "ratio", "ratio of medians", "median of per-round ratios", "CPU-time ratio"],
                        rrows), ""])
    print(md)
    if not a.quick:
        common.write_results("eval_rank", out, md)


if __name__ == "__main__":
    main()
