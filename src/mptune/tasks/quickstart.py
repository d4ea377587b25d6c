"""Tasks whose data comes from package registries (see :mod:`mptune.assets`): the quickstart's sets.

Two releases, both fetched by ``mptune quickstart`` into ``~/.cache/mptune/data``
(the same layout as ``../shared/data``):

* VADER (Hutto & Gilbert, ICWSM 2014; ``vader/*_GroundTruth.txt``): short texts
  from four domains -- movie-review snippets, Amazon review sentences, New York
  Times editorial sentences, tweets -- each with the mean of ~20 human sentiment
  ratings on a -4 (extremely negative) .. +4 (extremely positive) scale. Files are
  header-less, tab-separated ``id, mean rating, text`` with CRLF line ends.

  - ``vader_<domain>``: polarity (classification, ``negative`` / ``positive``).
    **Binarisation:** rating >= +0.5 is positive, rating <= -0.5 is negative, and
    rows with |rating| < 0.5 (the raters' neutral band, ~8% of movie snippets, 43%
    of NYT sentences) are dropped, so no label rests on rater noise around zero.
  - ``vader_<domain>_rating``: the mean rating itself (regression, Pearson /
    Spearman; the target is the rating rounded to the nearest 0.2, e.g. ``-2.4``),
    all rows.

* BIG-bench (``bigbench/<task>/task.json``; ``examples`` with ``input`` and
  ``target_scores``, the label being the option scored 1): VitaminC fact
  verification (True / False / Neither), presuppositions as NLI (entailment /
  neutral / contradiction), epistemic reasoning (entailment / non-entailment),
  WinoWhy (is the stated reason for a Winograd pronoun resolution correct?);
  and SQuAD-Shifts NYT (``bigbench/squad_shifts/nyt_v1.0.json``, SQuAD v1.1
  format) as extractive QA.

Splits. Each set is released as one file, so ``validation`` is a fixed seeded
hold-out of ``holdout`` rows (permutation seed 0, independent of the run seed)
and ``train`` is the rest, in file order; the paper's "small" policy then halves
the hold-out into dev and test (seed 42, as for GLUE). Where rows come in
families that share text (a VitaminC claim with its contrastive evidence, a
WinoWhy sentence with its candidate reasons, a presupposition item with its
negated twin, a NYT article's questions) the hold-out and the dev/test cut take
whole families (``group``), so no family straddles train and evaluation.

Templates are plain instructions ending in ``Answer:`` (the target follows after
a space), suited to a small instruction-tuned causal LM such as
SmolLM2-135M-Instruct; the label words are the datasets' own option names.

Errors name the file and line: the tsv reader's for VADER, and for task.json the
line on which the offending example starts.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from . import splits
from .base import Example, Source, Task, TaskKind
from .readers import DataError, read_text
from .registry import register_task

C, R, G = TaskKind.CLASSIFICATION, TaskKind.REGRESSION, TaskKind.GENERATION

HOLDOUT_SEED = 0
VADER_NEUTRAL_BAND = 0.5  # |mean rating| below this: dropped from the polarity tasks


# --- single-file releases: a fixed hold-out -------------------------------------------------

@dataclass(frozen=True)
class HeldOutTask(Task):
    """A task released as one file (``source.files["all"]``).

    Raw split ``validation`` = ``holdout`` rows (whole groups when examples carry
    one) of a fixed permutation (seed :data:`HOLDOUT_SEED`; a fifth of the rows for
    files with fewer than ``2 * holdout``); ``train`` = the rest, in file order. ``keep(row)`` (optional) drops raw rows before that (e.g. the
    neutral band of the VADER polarity tasks); a ValueError it raises is reported
    with the row's file:line.
    """

    holdout: int = 500
    keep: Optional[Callable[[dict], bool]] = None

    def __post_init__(self):
        super().__post_init__()
        if "all" not in self.source.files:
            raise ValueError(f"task {self.name}: a held-out task reads source.files['all']")
        if self.holdout < 2:
            raise ValueError(f"task {self.name}: holdout must be >= 2, got {self.holdout}")

    def __hash__(self) -> int:
        return hash(self.name)

    def load_raw(self, raw_split: str, data_dir: str | os.PathLike | None = None) -> list[Example]:
        if raw_split not in ("train", "validation"):
            raise DataError(f"task {self.name}: raw split {raw_split!r} does not exist; this set is one "
                            "file, split into 'train' and a held-out 'validation'")
        rows = super().load_raw("all", data_dir)
        want = self.holdout if len(rows) >= 2 * self.holdout else len(rows) // 5  # small (user) files: a fifth
        units = splits._units(rows)
        order = splits.permutation(len(units), HOLDOUT_SEED)
        taken, held = 0, []
        for u in order:  # whole units until the hold-out is full
            if taken >= max(want, 2):
                break
            held.append(u)
            taken += len(units[u])
        if taken >= len(rows):
            raise DataError(f"task {self.name}: only {len(rows)} rows in {len(units)} group(s); too few to hold "
                            "out a validation set")
        held_set = set(held)
        pick = sorted(i for u in range(len(units)) if (u in held_set) == (raw_split == "validation")
                      for i in units[u])
        return [rows[i] for i in pick]

    def _file_rows(self, raw_split: str, base: Path | None, labeled: bool):
        for uid, where, row in self._read(raw_split, base, labeled):
            if self.keep is not None:
                try:
                    if not self.keep(row):
                        continue
                except (ValueError, KeyError, TypeError) as e:
                    raise DataError(f"{where}: bad row for task {self.name} ({type(e).__name__}: {e}); "
                                    f"expected fields {list(self.required_fields(labeled))}") from None
            yield uid, where, row

    def _read(self, raw_split: str, base: Path | None, labeled: bool):
        return super()._file_rows(raw_split, base, labeled)


# --- BIG-bench task.json ---------------------------------------------------------------

def read_bigbench(path: str | os.PathLike) -> list[tuple[int, dict]]:
    """BIG-bench ``task.json`` -> ``[(line, example), ...]``, ``line`` being where the example starts.

    Raises DataError naming ``file:line`` for invalid JSON, a document without an
    ``examples`` list, or an example that is not an object with a string ``input``.
    """
    path = Path(path)
    text = read_text(path)
    if not text.strip():
        raise DataError(f"{path}: empty file, expected a BIG-bench task.json")
    cursor = [0, 1]  # (position, its line): positions are asked for in increasing order

    def line_of(pos: int) -> int:
        if pos < cursor[0]:
            return text.count("\n", 0, pos) + 1
        cursor[1] += text.count("\n", cursor[0], pos)
        cursor[0] = pos
        return cursor[1]

    dec = json.JSONDecoder()
    ws = " \t\r\n"

    def skip(i: int) -> int:
        while i < len(text) and text[i] in ws:
            i += 1
        return i

    def expect(i: int, ch: str, what: str) -> int:
        i = skip(i)
        if i >= len(text) or text[i] != ch:
            raise DataError(f"{path}:{line_of(i)}: invalid JSON (expected {what}); expected a BIG-bench "
                            "task.json object with an 'examples' list")
        return i + 1

    try:
        i = expect(0, "{", "'{'")
        found: list[tuple[int, Any]] | None = None
        i = skip(i)
        if i < len(text) and text[i] == "}":
            i += 1
        else:
            while True:
                key, i = dec.raw_decode(text, skip(i))
                i = expect(i, ":", "':'")
                i = skip(i)
                if key == "examples" and i < len(text) and text[i] == "[":
                    found, i = [], skip(i + 1)
                    if text[i] == "]":
                        i += 1
                    else:
                        while True:
                            start = skip(i)
                            value, i = dec.raw_decode(text, start)
                            found.append((line_of(start), value))
                            i = skip(i)
                            if text[i] == "]":
                                i += 1
                                break
                            i = expect(i, ",", "',' or ']'")
                else:
                    _, i = dec.raw_decode(text, i)
                i = skip(i)
                if i < len(text) and text[i] == "}":
                    i += 1
                    break
                i = expect(i, ",", "',' or '}'")
        if text[skip(i):].strip():
            raise DataError(f"{path}:{line_of(skip(i))}: invalid JSON (extra data after the document)")
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno}); "
                        "expected a BIG-bench task.json") from None
    except IndexError:
        raise DataError(f"{path}:{line_of(len(text))}: invalid JSON (truncated document)") from None
    if found is None:
        raise DataError(f"{path}:1: no 'examples' list; expected a BIG-bench task.json "
                        "{{'examples': [{{'input': ..., 'target_scores': {{...}}}}, ...]}}")
    if not found:
        raise DataError(f"{path}: the 'examples' list is empty")
    for line, ex in found:
        if not isinstance(ex, dict) or not isinstance(ex.get("input"), str):
            raise DataError(f"{path}:{line}: expected an example object with a string 'input', got "
                            f"{json.dumps(ex)[:80]}")
    return found


@dataclass(frozen=True)
class BigBenchTask(HeldOutTask):
    """A BIG-bench multiple-choice ``task.json``; the label is the option whose ``target_scores`` is 1."""

    def __hash__(self) -> int:
        return hash(self.name)

    def _read(self, raw_split: str, base: Path | None, labeled: bool):
        path = self._find_file(raw_split, base)
        try:
            rel = path.relative_to(base).as_posix() if base is not None else str(path)
        except ValueError:
            rel = str(path)
        for line, row in read_bigbench(path):
            yield f"{rel}:{line}", f"{path}:{line}", dict(row)


def _scored_label(row: dict, options: tuple[str, ...]) -> str:
    scores = row.get("target_scores")
    if not isinstance(scores, dict):
        raise ValueError("no 'target_scores' object")
    if set(scores) != set(options):
        raise ValueError(f"target_scores options {sorted(scores)} != expected {sorted(options)}")
    best = [k for k, v in scores.items() if v == 1]
    if len(best) != 1 or any(v not in (0, 1) for v in scores.values()):
        raise ValueError(f"target_scores {scores} must score exactly one option 1, the rest 0")
    return best[0]


def bigbench_prepare(options: tuple[str, ...], text: Callable[[str], dict], group: Callable[[dict], str] | None = None):
    def prepare(row: dict) -> dict:
        row.update(text(row["input"]))
        row["label"] = _scored_label(row, options)
        if group is not None:
            row["group"] = group(row)
        return row

    return prepare


def _after(s: str, marker: str) -> str:
    i = s.find(marker)
    return s[i + len(marker):] if i >= 0 else s


def _before(s: str, marker: str) -> str:
    i = s.find(marker)
    return s[:i] if i >= 0 else s


def _vitaminc_text(s: str) -> dict:
    if "\nClaim:" not in s:
        raise ValueError("input has no '\\nClaim:' line")
    evidence, claim = s.split("\nClaim:", 1)
    return {"evidence": evidence.strip(), "claim": claim.strip()}


def _presup_text(s: str) -> dict:
    s = _before(s, "The answer is:").strip()
    if "Sentence 2:" not in s:
        raise ValueError("input has no 'Sentence 2:' part")
    s1, s2 = s.split("Sentence 2:", 1)
    return {"sentence1": _after(s1, "Sentence 1:").strip(), "sentence2": s2.strip()}


def _epistemic_text(s: str) -> dict:
    if "Hypothesis:" not in s:
        raise ValueError("input has no 'Hypothesis:' part")
    p, h = s.split("Hypothesis:", 1)
    return {"premise": _after(p, "Premise:").strip(), "hypothesis": h.strip()}


def _winowhy_text(s: str) -> dict:
    return {"text": s.strip()}


def _presup_group(row: dict) -> str:
    c = row.get("comment")
    return str(c["example_id"]) if isinstance(c, dict) and "example_id" in c else row["sentence2"]


BB = "bigbench"


def bigbench(name: str, folder: str, template: str, options: tuple[str, ...], text, holdout: int,
             group=None, description: str = "", aliases=()) -> Task:
    return register_task(BigBenchTask(
        name=name, group="bigbench", kind=C,
        source=Source(files={"all": f"{BB}/{folder}/task.json"}, format="bigbench"),
        template=template, label_words=options, prepare=bigbench_prepare(options, text, group),
        fields=("input", "target_scores"), split="small", holdout=holdout, grouped=group is not None,
        description=description, asset=folder), aliases=aliases)


VITAMINC = bigbench(
    "vitaminc", "vitaminc_fact_verification",
    "Evidence: {evidence}\nClaim: {claim}\nBased only on the evidence, is the claim True, False, or Neither?\n"
    "Answer:", ("True", "False", "Neither"), _vitaminc_text, holdout=1000,
    group=lambda row: row["claim"], aliases=("vitaminc_fact_verification",),
    description="VitaminC fact verification (BIG-bench); families = rows sharing a claim")

PRESUPPOSITIONS = bigbench(
    "presuppositions_nli", "presuppositions_as_nli",
    "Sentence 1: {sentence1}\nSentence 2: {sentence2}\nDoes sentence 1 entail or contradict sentence 2, or "
    "neither (neutral)?\nAnswer:", ("entailment", "neutral", "contradiction"), _presup_text, holdout=200,
    group=_presup_group, aliases=("presuppositions_as_nli",),
    description="presuppositions as NLI (BIG-bench); families = an item and its negated/adversarial twins")

EPISTEMIC = bigbench(
    "epistemic_reasoning", "epistemic_reasoning",
    "Premise: {premise}\nHypothesis: {hypothesis}\nDoes the premise entail the hypothesis? Answer entailment "
    "or non-entailment.\nAnswer:", ("entailment", "non-entailment"), _epistemic_text, holdout=400,
    aliases=("epistemic",), description="epistemic reasoning (BIG-bench): theory-of-mind entailment")

WINOWHY = bigbench(
    "winowhy", "winowhy",
    "{text}\nIs the reasoning above correct or incorrect?\nAnswer:", ("correct", "incorrect"), _winowhy_text,
    holdout=400, group=lambda row: _before(row["text"], " The '"),
    description="WinoWhy (BIG-bench): is the reason given for a Winograd pronoun resolution right; "
                "families = reasons for the same sentence")


# --- SQuAD-Shifts NYT ------------------------------------------------------------------

def _by_article(row: dict) -> dict:
    row["group"] = row.get("title") or row["context"][:80]
    return row


SQUAD_SHIFTS_NYT = register_task(HeldOutTask(
    name="squad_shifts_nyt", group="qa", kind=G,
    source=Source(files={"all": f"{BB}/squad_shifts/nyt_v1.0.json"}, format="squad"),
    template="Context: {context}\nQuestion: {question}\nAnswer with a short span copied from the context.\n"
             "Answer:",
    metrics=("squad_em", "squad_f1"), score_metrics=("squad_f1",), prepare=_by_article, grouped=True,
    split="small", holdout=1000, asset="squad_shifts",
    description="SQuAD-Shifts (Miller et al., 2020) New York Times articles, SQuAD v1.1 format via BIG-bench; "
                "held out by article"), aliases=("squadshifts_nyt", "nyt_qa"))


# --- VADER -----------------------------------------------------------------------------

VADER_FILES = {"movie": "movieReviewSnippets", "amazon": "amazonReviewSnippets",
               "nyt": "nytEditorialSnippets", "tweets": "tweets"}
VADER_WHAT = {"movie": "movie review", "amazon": "product review", "nyt": "newspaper editorial",
              "tweets": "tweet"}


def _rating(row: dict) -> float:
    try:
        return float(row["rating"])
    except ValueError:
        raise ValueError(f"rating {row['rating']!r} is not a number") from None


def _polar(row: dict) -> bool:
    return abs(_rating(row)) >= VADER_NEUTRAL_BAND


def _polarity_prepare(row: dict) -> dict:
    row["label"] = 1 if _rating(row) > 0 else 0
    return row


def _rating_prepare(row: dict) -> dict:
    _rating(row)  # a number, else a file:line error
    # keep the text: base.Task reads a numeric label of -1 as "missing" (the Hub's convention),
    # and -1.0 is a real VADER rating
    row["label"] = row["rating"].strip()
    return row


def vader(domain: str, holdout: int) -> tuple[Task, Task]:
    files = {"all": f"vader/{VADER_FILES[domain]}_GroundTruth.txt"}
    src = Source(files=files, format="tsv", fieldnames=("id", "rating", "text"), headerless=True)
    what = VADER_WHAT[domain]
    polarity = register_task(HeldOutTask(
        name=f"vader_{domain}", group="vader", kind=C, source=src,
        template=f"Text: {{text}}\nIs the sentiment of this {what} positive or negative?\nAnswer:",
        label_words=("negative", "positive"), prepare=_polarity_prepare, fields=("id", "rating", "text"),
        split="small", holdout=holdout, keep=_polar, asset="vader",
        description=f"VADER {what} sentences: polarity of the mean human rating; |rating| < "
                    f"{VADER_NEUTRAL_BAND} dropped"))
    rating = register_task(HeldOutTask(
        name=f"vader_{domain}_rating", group="vader", kind=R, source=src,
        template=f"Text: {{text}}\nRate the sentiment of this {what} from -4 (very negative) to 4 (very "
                 "positive).\nRating:",
        metrics=("pearson", "spearman"), prepare=_rating_prepare, fields=("id", "rating", "text"),
        split="small", holdout=holdout, asset="vader",
        description=f"VADER {what} sentences: mean human sentiment rating (-4..4), regression"))
    return polarity, rating


VADER_MOVIE, VADER_MOVIE_RATING = vader("movie", 1000)
VADER_AMAZON, VADER_AMAZON_RATING = vader("amazon", 500)
VADER_NYT, VADER_NYT_RATING = vader("nyt", 500)
VADER_TWEETS, VADER_TWEETS_RATING = vader("tweets", 500)

QUICKSTART_TASKS = tuple(t.name for t in (
    VADER_MOVIE, VADER_AMAZON, VADER_NYT, VADER_TWEETS, VADER_MOVIE_RATING, VADER_AMAZON_RATING,
    VADER_NYT_RATING, VADER_TWEETS_RATING, VITAMINC, PRESUPPOSITIONS, EPISTEMIC, WINOWHY, SQUAD_SHIFTS_NYT))
