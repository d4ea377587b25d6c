"""VADER entries (Hutto & Gilbert, ICWSM 2014; files ``vader/*_GroundTruth.txt``, asset ``vader``).

Short texts from four domains -- movie-review snippets, Amazon review sentences,
New York Times editorial sentences, tweets -- each with the mean of ~20 human
sentiment ratings on a -4 (extremely negative) .. +4 (extremely positive) scale.
Files are header-less, tab-separated ``id, mean rating, text`` with CRLF line ends.

* ``vader_<domain>``: polarity (classification, ``negative`` / ``positive``).
  **Binarisation:** rating >= +0.5 is positive, rating <= -0.5 is negative, and
  rows with |rating| < 0.5 (the raters' neutral band, ~8% of movie snippets, 43%
  of NYT sentences) are dropped, so no label rests on rater noise around zero.
* ``vader_<domain>_rating``: the mean rating itself (regression, Pearson /
  Spearman; the target is the rating rounded to the nearest 0.2, e.g. ``-2.4``),
  all rows.

Each domain is one file: ``validation`` is a fixed hold-out (``Task.holdout``,
:func:`.splits.hold_out`), halved into dev / test by the "small" policy. Templates
are plain instructions ending in ``Answer:`` / ``Rating:``, suited to a small
instruction-tuned causal LM, so the ``natural`` format is the same text (ATTEMPT has
no VADER: ``attempt`` keeps it too). Bad rows name the file and line (the tsv reader's).
"""

from __future__ import annotations

from .base import Source, Task, TaskKind
from .formats import Format
from .registry import register_task

NEUTRAL_BAND = 0.5  # |mean rating| below this: dropped from the polarity tasks
FILES = {"movie": "movieReviewSnippets", "amazon": "amazonReviewSnippets", "nyt": "nytEditorialSnippets",
         "tweets": "tweets"}
WHAT = {"movie": "movie review", "amazon": "product review", "nyt": "newspaper editorial", "tweets": "tweet"}


def _rating(row: dict) -> float:
    try:
        return float(row["rating"])
    except ValueError:
        raise ValueError(f"rating {row['rating']!r} is not a number") from None


def _polar(row: dict) -> bool:
    return abs(_rating(row)) >= NEUTRAL_BAND


def _polarity_prepare(row: dict) -> dict:
    row["label"] = 1 if _rating(row) > 0 else 0
    return row


def _rating_prepare(row: dict) -> dict:
    _rating(row)  # a number, else a file:line error
    # keep the text: a numeric label of -1 reads as "missing" (the Hub's convention),
    # and -1.0 is a real VADER rating
    row["label"] = row["rating"].strip()
    return row


# natural format of the polarity tasks: SST-2's; on SmolLM2-135M-Instruct it scores 76.5 / 75.0 zero-shot on
# movie / NYT dev against 52.0 / 60.5 for the question template (benchmarks/quality_cpu/v2/templates.md)
SENTIMENT = "sentence: {text}\nsentiment:"


def vader(domain: str, holdout: int) -> tuple[Task, Task]:
    src = Source(files={"all": f"vader/{FILES[domain]}_GroundTruth.txt"}, format="tsv",
                 fieldnames=("id", "rating", "text"), headerless=True)
    what = WHAT[domain]
    common = dict(group="vader", source=src, fields=("id", "rating", "text"), split="small", holdout=holdout,
                  asset="vader")
    polar = f"Text: {{text}}\nIs the sentiment of this {what} positive or negative?\nAnswer:"
    scale = f"Text: {{text}}\nRate the sentiment of this {what} from -4 (very negative) to 4 (very positive).\nRating:"
    polarity = register_task(Task(
        name=f"vader_{domain}", kind=TaskKind.CLASSIFICATION, template=polar, formats={"natural": Format(SENTIMENT)},
        label_words=("negative", "positive"), prepare=_polarity_prepare, keep=_polar,
        description=f"VADER {what} sentences: polarity of the mean human rating; |rating| < "
                    f"{NEUTRAL_BAND} dropped", **common))
    rating = register_task(Task(
        name=f"vader_{domain}_rating", kind=TaskKind.REGRESSION, template=scale, formats={"natural": Format(scale)},
        metrics=("pearson", "spearman"), prepare=_rating_prepare,
        description=f"VADER {what} sentences: mean human sentiment rating (-4..4), regression", **common))
    return polarity, rating


VADER_MOVIE, VADER_MOVIE_RATING = vader("movie", 1000)
VADER_AMAZON, VADER_AMAZON_RATING = vader("amazon", 500)
VADER_NYT, VADER_NYT_RATING = vader("nyt", 500)
VADER_TWEETS, VADER_TWEETS_RATING = vader("tweets", 500)
