"""Diagnostic: how good is each method's *starting* prompt on the targets (before any target step)?

PT starts from sampled vocabulary embeddings, SPoT from the teachers' average
prompt, MPT from P* (adapt.init=shared: u v = 1, so the prompt is exactly P*) or
from P* ∘ mean_k(u_k v_k) (adapt.init=shared_times_mean_task, which equals the
average of the distilled source prompts P_k), and the ablations from their own P*. Scores are on the first N dev examples of each target.

    python benchmarks/quality_cpu/init_scores.py runs/quality_cpu_v3 --n 48 --out benchmarks/quality_cpu/init_scores.json
    python benchmarks/quality_cpu/init_scores.py --render benchmarks/quality_cpu/init_scores.json  # rewrite the .md only
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", nargs="?", help="a finished benchmark run folder (runs/quality_cpu_v3)")
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1, help="PT's init seed (target_train.seed)")
    ap.add_argument("--out", default=None, help="write the scores here (JSON) and the table next to it (.md)")
    ap.add_argument("--controls", default="cola",
                    help="comma-separated targets left out of the second average (as in run.py)")
    ap.add_argument("--render", default=None, metavar="JSON",
                    help="only rewrite the .md table of an earlier --out JSON")
    args = ap.parse_args(argv)
    if args.render:
        data = json.loads(Path(args.render).read_text())
        Path(args.render).with_suffix(".md").write_text(render(data) + "\n")
        return 0
    if not args.run_dir:
        ap.error("run_dir is required (or --render JSON)")

    import torch

    torch.set_num_threads(args.threads)
    from mptune.config import load_yaml, parse
    from mptune.evaluation import evaluate
    from mptune.plan import METHODS, SOURCES, Layout
    from mptune.prompts import load_prompt
    from mptune.prompts.decomposed import DecomposedPrompt
    from mptune.prompts.init import init_prompt_vectors
    from mptune.recipes import common
    from mptune.recipes.pipeline import PipelineConfig
    from mptune.tasks import get_task

    run = Path(args.run_dir)
    cfg = parse(PipelineConfig, load_yaml(run / "config.yaml"), source=str(run / "config.yaml"))
    cfg = dataclasses.replace(cfg, output_dir=str(run))  # the folder may have moved since
    layout = Layout(cfg, check_data=False)
    from mptune.backbone import load_backbone

    bb = load_backbone(cfg.model)
    enc = common.encoder_for(bb, cfg.data)
    inits: dict[str, torch.Tensor] = {}
    g = torch.Generator().manual_seed(args.seed)
    inits["pt (vocab init)"] = init_prompt_vectors(cfg.prompt, bb.model.get_input_embeddings(), bb.tokenizer, g)
    teachers = [load_prompt(layout.teacher(s).folder, backbone=bb.name, dim=bb.hidden_size)[0]["prompt"]
                for s in cfg.sources]
    inits["spot (teachers' average)"] = torch.stack(teachers).mean(0)
    for s, t in zip(cfg.sources, teachers):
        inits[f"teacher {s}"] = t
    for v in SOURCES:
        stage = layout.source(v)
        if (stage.folder / "prompt.safetensors").is_file():
            tensors, meta = load_prompt(stage.folder, backbone=bb.name, dim=bb.hidden_size)
            name = next(m.name for m in METHODS.values() if m.source == v)  # the method adapting from it
            src = DecomposedPrompt.from_tensors(tensors, meta)
            inits[f"{name} (P*: adapt.init=shared)"] = src.shared.detach()
            if stage.config.decompose:  # not decomposed: u v = 1 throughout, so the rows below equal P*
                with torch.no_grad():
                    table = src()  # [K, l, d]: the distilled source prompts P_k
                inits[f"{name} (P* ∘ mean u_k v_k: adapt.init=shared_times_mean_task)"] = table.mean(0)
                for s, row in zip(meta.tasks, table):
                    inits[f"{name} source prompt P_{s}"] = row
    rows = {}
    for name, p in inits.items():
        table = p.unsqueeze(0)
        rows[name] = {}
        for task in cfg.targets:
            t = get_task(task)
            dev = common.eval_examples(t, "dev", cfg.data, limit=args.n)
            r = evaluate(bb, lambda: table, t, dev, enc, 32, progress=False)
            rows[name][task] = round(r.metrics["score"], 1)
        rows[name]["average"] = round(sum(rows[name][t] for t in cfg.targets) / len(cfg.targets), 1)
        print(name, rows[name], flush=True)
    controls = [c for c in args.controls.split(",") if c]
    data = {"run_dir": str(run), "n": args.n, "targets": list(cfg.targets), "controls": controls, "scores": rows}
    md = render(data)
    print(md)
    if args.out:
        Path(args.out).write_text(json.dumps(data, indent=1) + "\n")
        Path(args.out).with_suffix(".md").write_text(md + "\n")
    return 0


def render(data: dict) -> str:
    """The markdown table of an init-scores JSON: one row per starting prompt."""
    rows = data["scores"]
    targets = data["targets"]
    controls = [c for c in data.get("controls", []) if c in targets]
    kept = [t for t in targets if t not in controls]
    extra = [f"average w/o {', '.join(controls)}"] if controls else []
    lines = [f"Dev score at step 0 (first {data['n']} dev examples of each target), before any target training"
             + (f"; run folder `{data['run_dir']}`" if data.get("run_dir") else "") + ":", "",
             "| starting prompt | " + " | ".join(targets + ["average"] + extra) + " |",
             "|---" * (len(targets) + 2 + len(extra)) + "|"]
    for name, r in rows.items():
        cells = [str(r[t]) for t in targets] + [str(r["average"])]
        if controls:
            cells.append(f"{sum(r[t] for t in kept) / len(kept):.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
