"""Templates that suit the backbone (issue #18, item 6), chosen on dev before any training: the
zero-shot dev score of each candidate template of a target on the frozen SmolLM2-135M-Instruct, no
soft prompt (rank classification: the label word, with its leading space, whose tokens have the
higher summed log-prob).

    python benchmarks/quality_cpu/v2/templates.py --n 200     # -> v2/templates.{json,md}

The registry's natural format of a task is one candidate; the best on dev is what the v2 run uses.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]

VADER_Q = "Text: {text}\nIs the sentiment of this %s positive or negative?\nAnswer:"
CANDIDATES = {  # target -> name -> (template, label words)
    "vader_movie": {"question (registry natural)": (VADER_Q % "movie review", ("negative", "positive")),
                    "sentence/sentiment": ("sentence: {text}\nsentiment:", ("negative", "positive")),
                    "review/sentiment": ("Review: {text}\nSentiment:", ("negative", "positive"))},
    "vader_nyt": {"question (registry natural)": (VADER_Q % "newspaper editorial sentence", ("negative", "positive")),
                  "sentence/sentiment": ("sentence: {text}\nsentiment:", ("negative", "positive"))},
    "cola": {"question (registry natural)": ("Sentence: {sentence}\nIs this sentence grammatical? Answer yes or "
                                             "no.\nAnswer:", ("no", "yes")),
             "sentence/grammatical": ("sentence: {sentence}\ngrammatical:", ("no", "yes")),
             "t5": ("cola sentence: {sentence}", ("unacceptable", "acceptable"))},
}


def score(model, tok, task, examples) -> float:
    import torch

    words = [tok(" " + w, add_special_tokens=False).input_ids for w in task.label_words]
    preds = []
    with torch.no_grad():
        for e in examples:
            x = tok(e.source, add_special_tokens=False).input_ids
            first = model(torch.tensor([x])).logits[0, -1].log_softmax(-1)  # every label's first token
            lp = []
            for w in words:  # a longer label continues in its own pass
                rest = model(torch.tensor([x + w])).logits[0, len(x):-1].log_softmax(-1) if len(w) > 1 else None
                lp.append(float(first[w[0]]) + sum(float(rest[i, t]) for i, t in enumerate(w[1:])))
            preds.append(max(range(len(lp)), key=lp.__getitem__))
    return task.score(examples, preds)["score"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200, help="dev examples per target (the first of mptune's dev split)")
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO / "src"))
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mptune import assets
    from mptune.tasks import get_task, loading

    torch.manual_seed(0)
    path = assets.smollm2_model_dir()
    tok, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path).eval()
    res = {"n": args.n, "model": "SmolLM2-135M-Instruct", "targets": {}}
    for target, cands in CANDIDATES.items():
        base = get_task(target)
        res["targets"][target] = {}
        for name, (template, words) in cands.items():
            task = dataclasses.replace(base, template=template, label_words=words, formats={})
            dev = loading.load(task, "dev", args.data_dir)[: args.n]
            res["targets"][target][name] = {"template": template, "label_words": list(words),
                                            "dev": score(model, tok, task, dev), "metric": "/".join(task.metrics)}
            print(target, name, res["targets"][target][name]["dev"], flush=True)
    lines = [f"# Zero-shot dev score of candidate templates (first {args.n} dev examples, no soft prompt)", "",
             "Command: `python benchmarks/quality_cpu/v2/templates.py --n %d`" % args.n, "",
             "| target | template | label words | dev |", "|---|---|---|---|"]
    for t, cands in res["targets"].items():
        best = max(cands, key=lambda k: cands[k]["dev"])
        for name, c in cands.items():
            tpl = c["template"].replace("\n", "\\n")
            lines.append(f"| {t} | {name}{' **(best)**' if name == best else ''}: `{tpl}` | "
                         f"{', '.join(c['label_words'])} | {c['dev']:.1f} ({c['metric']}) |")
    (HERE / "templates.json").write_text(json.dumps(res, indent=1) + "\n")
    (HERE / "templates.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
