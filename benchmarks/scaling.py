"""Scaling: training step time and peak memory of mptune's fast path vs its plain path vs
the backbone on the input alone, against prompt length l, batch size, number of tasks
per batch K, and input length; with and without gradient checkpointing.

    python benchmarks/scaling.py             # ~10 min on 2 busy cores
    python benchmarks/scaling.py --quick     # 2-layer smoke run (not committed)

Model: the SmolLM2-135M shape cut to 4 layers (d 576, 9/3 heads, ffn 1536, vocab 49152)
to keep the sweep cheap; 2 threads. Defaults: batch 8, 64 input tokens (4 targets),
l = 100, K = 2. The K sweep uses batch 32 x 32 tokens (K distinct tasks need K rows).
All points of a sweep run interleaved in the same rounds (3 rounds, medians; ratios are
medians of per-round ratios); methods that do not depend on the swept value (the floor
for l and K, the plain path for K) run once per round and serve every point.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

common.setup(threads=2)

import methods  # noqa: E402

T = 4
BASE = dict(B=8, S=64, l=100, K=2)
SWEEPS = {
    "prompt_length": ("l", [10, 50, 100, 200, 300], {}),
    "batch_size": ("B", [1, 2, 4, 8, 16], {}),
    "tasks_per_batch": ("K", [1, 2, 4, 8, 16, 32], {"B": 32, "S": 32}),
    "input_length": ("S", [16, 64, 128, 256], {}),
    "prompt_length_gc": ("l", [10, 100, 300], {"gc": True}),
}


def sweep(models: dict, key: str, values: list, over: dict, repeats: int) -> list[dict]:
    """All points of one sweep interleaved in the same rounds (so every ratio is side by side).
    Methods that do not depend on the swept value (the floor for l and K, the plain path for K)
    run once per round and serve every point. With over["gc"], each point also runs the three
    methods with gradient checkpointing (a second copy of the model with it enabled)."""
    variants = (("", False), (" + GC", True)) if over.get("gc") else (("", False),)
    shared_floor, shared_plain = key in ("l", "K"), key == "K"
    fns, names = {}, {}
    for v in values:
        p = dict(BASE, **{k: x for k, x in over.items() if k != "gc"}, **{key: v})
        K = min(p["K"], p["B"])
        batch = common.causal_batch(p["B"], p["S"], T, K, models["plain"].config.vocab_size)
        for suffix, gc in variants:
            model = models["gc" if gc else "plain"]
            for m in ("fast", "plain", "floor"):
                shared = (m == "floor" and shared_floor) or (m == "plain" and shared_plain)
                fn_name = f"{m}{suffix}" + ("" if shared else f" @{v}")
                names[(v, m + suffix)] = fn_name
                if fn_name in fns:
                    continue
                if m == "floor":
                    fns[fn_name] = methods.floor_step(model, batch, gc=gc)
                else:
                    fns[fn_name] = methods.mptune_step(model, batch, p["l"], max(values) if key == "K" else K,
                                                       fast=m == "fast", gc=gc)
    print(f"  {len(fns)} methods x {repeats} rounds", flush=True)
    runs = common.interleaved(fns, repeats, warmup=0, log=lambda m: print(m[:200], flush=True))
    points = []
    for v in values:
        n = lambda m: names[(v, m)]  # noqa: E731
        out = {"params": dict(BASE, **over, **{key: v})}
        for suffix, _ in variants:
            f, pl, fl = n("fast" + suffix), n("plain" + suffix), n("floor" + suffix)
            out["fast" + suffix], out["plain" + suffix], out["floor" + suffix] = (runs.summary(x) for x in (f, pl, fl))
            k = suffix.replace(" + GC", "_gc")
            out["plain_over_fast" + k] = runs.ratio(pl, f)
            out["fast_over_floor" + k] = runs.ratio(f, fl)
            out["plain_over_fast_cpu" + k] = runs.ratio(pl, f, cpu=True)
            out["fast_over_floor_cpu" + k] = runs.ratio(f, fl, cpu=True)
        if over.get("gc"):
            out["gc_time_fast"] = runs.ratio(n("fast + GC"), n("fast"))
            out["gc_time_plain"] = runs.ratio(n("plain + GC"), n("plain"))
        points.append(out)
    return points


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    layers, repeats = (2, 1) if a.quick else (a.layers, a.repeats)
    models = {"plain": common.llama(layers), "gc": common.llama(layers)}
    res = {"environment": common.environment(2), "repeats": repeats, "target_tokens": T,
           "model": f"SmolLM2-135M-shaped random Llama cut to {layers} layers", "defaults": BASE, "sweeps": {}}
    for name, (key, values, over) in SWEEPS.items():
        print(f"== {name}: {key} in {values} {over}", flush=True)
        rows = sweep(models, key, values, over, repeats)
        for r in rows:
            print(f"{name} {key}={r['params'][key]}: fast {r['fast']['median_s']:.2f}s plain "
                  f"{r['plain']['median_s']:.2f}s floor {r['floor']['median_s']:.2f}s  plain/fast "
                  f"{r['plain_over_fast']:.2f} fast/floor {r['fast_over_floor']:.2f}  mem fast "
                  f"{r['fast']['peak_rss_mib']:.0f} MiB plain {r['plain']['peak_rss_mib']:.0f} MiB", flush=True)
        res["sweeps"][name] = {"key": key, "over": over, "points": rows}
    md = markdown(res)
    print(md)
    if a.quick:
        return
    common.write_results("scaling", res, md)
    plot(res)


def markdown(res: dict) -> str:
    out = ["# Scaling: fast path vs plain path vs the backbone on the input alone", "",
           f"{res['model']}, CPU, 2 threads, {res['repeats']} interleaved rounds per sweep (median), "
           f"{res['target_tokens']} target tokens. Defaults: {res['defaults']}. "
           "`plain/fast` = how many times slower the plain path is; `fast/floor` = the fast path's cost over the "
           "backbone's forward+backward on the input alone (1.0 = free prompt). Ratios are medians of per-round "
           "ratios (wall time; CPU time in brackets). Memory: peak resident set during the step above the "
           "resident set before it.", ""]
    for name, sw in res["sweeps"].items():
        if name == "prompt_length_gc":
            continue
        key = sw["key"]
        title = {"prompt_length": "prompt length l", "batch_size": "batch size B",
                 "tasks_per_batch": "tasks per batch K (batch 32 x 32 tokens)", "input_length": "input length S"}[name]
        out += [f"## {title}", ""]
        rows = []
        for r in sw["points"]:
            rows.append([r["params"][key], r["fast"]["median_s"], r["plain"]["median_s"], r["floor"]["median_s"],
                         f"{r['plain_over_fast']:.2f} ({r['plain_over_fast_cpu']:.2f})",
                         f"{r['fast_over_floor']:.2f} ({r['fast_over_floor_cpu']:.2f})",
                         r["fast"]["peak_rss_mib"], r["plain"]["peak_rss_mib"], r["floor"]["peak_rss_mib"]])
        out += [common.md_table([key, "fast s", "plain s", "floor s", "plain/fast", "fast/floor", "fast MiB",
                                 "plain MiB", "floor MiB"], rows), ""]
    gc = res["sweeps"].get("prompt_length_gc")
    if gc:
        rows = [[r["params"]["l"], r["fast"]["peak_rss_mib"], r["fast + GC"]["peak_rss_mib"],
                 r["plain"]["peak_rss_mib"], r["plain + GC"]["peak_rss_mib"], r["floor"]["peak_rss_mib"],
                 r["floor + GC"]["peak_rss_mib"], r["gc_time_fast"], r["gc_time_plain"],
                 r["plain_over_fast_gc"], r["fast_over_floor_gc"]] for r in gc["points"]]
        out += ["## gradient checkpointing (the same rounds, without and with)", "",
                "Peak RSS over the step (MiB) and time ratios: `GC/no-GC` = step time with checkpointing over "
                "without; `plain/fast`, `fast/floor` with checkpointing on for all three.", "",
                common.md_table(["l", "fast", "fast + GC", "plain", "plain + GC", "floor", "floor + GC",
                                 "fast GC/no-GC", "plain GC/no-GC", "plain/fast (GC)", "fast/floor (GC)"], rows), ""]
    return "\n".join(out)


def plot(res: dict) -> None:
    names = [n for n in res["sweeps"] if n != "prompt_length_gc"]
    with common.Plot("scaling") as plt:
        fig, axes = plt.subplots(2, len(names), figsize=(4 * len(names), 6.5))
        for j, name in enumerate(names):
            sw = res["sweeps"][name]
            xs = [r["params"][sw["key"]] for r in sw["points"]]
            ax = axes[0][j]
            for m, c in (("fast", "tab:green"), ("plain", "tab:red"), ("floor", "tab:gray")):
                ax.plot(xs, [r[m]["median_s"] for r in sw["points"]], "o-", color=c, label=m)
            if name == "prompt_length" and "prompt_length_gc" in res["sweeps"]:
                g = res["sweeps"]["prompt_length_gc"]["points"]
                ax.plot([r["params"]["l"] for r in g], [r["fast + GC"]["median_s"] for r in g], "s--",
                        color="tab:green", alpha=0.6, label="fast + GC")
                ax.plot([r["params"]["l"] for r in g], [r["plain + GC"]["median_s"] for r in g], "s--",
                        color="tab:red", alpha=0.6, label="plain + GC")
            ax.set_xlabel(sw["key"])
            ax.set_ylabel("s/step (median)")
            ax.legend(fontsize=7)
            ax = axes[1][j]
            for m, c in (("fast", "tab:green"), ("plain", "tab:red"), ("floor", "tab:gray")):
                ax.plot(xs, [r[m]["peak_rss_mib"] for r in sw["points"]], "o-", color=c, label=m)
            ax.set_xlabel(sw["key"])
            ax.set_ylabel("peak RSS over step (MiB)")
        fig.suptitle(res["model"], fontsize=9)


if __name__ == "__main__":
    main()
