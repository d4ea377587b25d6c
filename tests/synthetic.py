"""Small synthetic data folders in the original release layouts (GLUE .tsv, SQuAD .json),
made up on the spot so tests never copy real dataset text."""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = "cat dog sat mat ran fast slow red blue big small tree house car book read wrote ada".split()


def _sent(rng: random.Random, n: int = 6) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def write_glue_rte(root: Path, n_train: int = 32, n_dev: int = 24, seed: int = 0) -> None:
    rng = random.Random(seed)
    d = root / "glue" / "RTE"
    d.mkdir(parents=True, exist_ok=True)
    for name, n in (("train.tsv", n_train), ("dev.tsv", n_dev)):
        rows = ["index\tsentence1\tsentence2\tlabel"]
        for i in range(n):
            s1 = _sent(rng)
            ent = rng.random() < 0.5
            s2 = s1 if ent else _sent(rng)
            rows.append(f"{i}\t{s1}\t{s2}\t{'entailment' if ent else 'not_entailment'}")
        (d / name).write_text("\n".join(rows) + "\n", encoding="utf-8")


def write_glue_stsb(root: Path, n_train: int = 24, n_dev: int = 16, seed: int = 1) -> None:
    rng = random.Random(seed)
    d = root / "glue" / "STS-B"
    d.mkdir(parents=True, exist_ok=True)
    head = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    for name, n in (("train.tsv", n_train), ("dev.tsv", n_dev)):
        rows = [head]
        for i in range(n):
            rows.append(f"{i}\tmain\tx\t2012\t{i}\tnone\tnone\t{_sent(rng)}\t{_sent(rng)}\t{rng.uniform(0, 5):.3f}")
        (d / name).write_text("\n".join(rows) + "\n", encoding="utf-8")


def write_squad(root: Path, n_train: int = 1016, n_dev: int = 12, seed: int = 2) -> None:
    rng = random.Random(seed)
    d = root / "squad"
    d.mkdir(parents=True, exist_ok=True)
    for name, n in (("train-v1.1.json", n_train), ("dev-v1.1.json", n_dev)):
        paras = []
        for i in range(n):
            who = rng.choice(["ada", "cat", "dog"])
            ctx = f"The book was written by {who} in 18{rng.randint(10, 99)}."
            start = ctx.index(who)
            paras.append({"context": ctx, "qas": [{"id": f"{name}-{i}", "question": "Who wrote the book?",
                                                   "answers": [{"text": who, "answer_start": start}]}]})
        (d / name).write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": paras}]}))


def write_all(root: Path) -> Path:
    write_glue_rte(root)
    write_glue_stsb(root)
    write_squad(root)
    return root
