"""Counts for the reliability figures: faults injected, hostile inputs tried, how each was handled.

Tests call ``tally(kind, handled=True)``; the section's conftest prints the totals at the end of
the run (``pytest -s`` not needed) and writes them to $MPTUNE_RELIABILITY_COUNTS if set.
"""

from __future__ import annotations

from collections import Counter

COUNTS: Counter = Counter()
UNHANDLED: Counter = Counter()


def tally(kind: str, n: int = 1, handled: bool = True) -> None:
    COUNTS[kind] += n
    if not handled:
        UNHANDLED[kind] += n
