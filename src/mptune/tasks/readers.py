"""Readers for the original release formats of the task files.

Every reader returns ``[(where, row), ...]`` where ``where`` is the 1-based line
number of the row (tsv, csv, jsonl; for a BIG-bench ``task.json`` the line its
example starts on) or the question id (SQuAD json), and ``row`` a dict of the
raw fields. Bad input never gets dropped silently: a missing
column, a row with the wrong number of fields (wrong delimiter, truncated line),
invalid JSON or an empty file raise :class:`DataError` whose message starts with
``file:line`` and says what was expected.

GLUE tsv files are read with ``csv.QUOTE_NONE`` semantics (a tab separates
fields, quotes are literal text), a UTF-8 BOM is stripped (MRPC ships one) and
CRLF line ends are accepted; header-less files (CoLA train/dev) take their
column names from ``fieldnames``.
"""

from __future__ import annotations

import bisect
import csv
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable

from ..errors import MptuneError

Rows = list[tuple[Any, dict[str, Any]]]


class DataError(MptuneError, ValueError):
    """A data file (or row) does not have the expected shape; message names file:line."""


def read_text(path: str | os.PathLike) -> str:
    """A UTF-8 file's text (BOM dropped); DataError naming file:line if missing or not UTF-8."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 text ({e.reason})") from None


def _lines(path: Path) -> list[str]:
    lines = read_text(path).splitlines()
    while lines and not lines[-1].strip():  # trailing blank lines only
        lines.pop()
    if not lines:
        raise DataError(f"{path}: empty file, expected rows")
    return lines


def _check_columns(path: Path, header: list[str], required: Iterable[str]) -> None:
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(f"{path}:1: missing column(s) {missing}; header has {header}")


def read_tsv(path: str | os.PathLike, fieldnames: list[str] | tuple[str, ...] | None = None,
             required: Iterable[str] = ()) -> Rows:
    """Tab-separated file, one row per line, no quoting (``csv.QUOTE_NONE``).

    With ``fieldnames`` the file has no header row and its columns are named by
    ``fieldnames``; otherwise the first line is the header.
    """
    path = Path(path)
    lines = _lines(path)
    if fieldnames is None:
        header, start = lines[0].split("\t"), 1
    else:
        header, start = list(fieldnames), 0
    _check_columns(path, header, required)
    rows: Rows = []
    for i in range(start, len(lines)):
        fields = lines[i].split("\t")
        if len(fields) != len(header):
            hint = " (wrong delimiter? expected tabs)" if len(fields) == 1 else ""
            raise DataError(f"{path}:{i + 1}: expected {len(header)} tab-separated fields "
                            f"{header}, got {len(fields)}{hint}")
        rows.append((i + 1, dict(zip(header, fields))))
    return rows


def read_csv(path: str | os.PathLike, fieldnames: list[str] | tuple[str, ...] | None = None,
             required: Iterable[str] = ()) -> Rows:
    """Comma-separated file with standard double-quote quoting (fields may span lines)."""
    path = Path(path)
    _lines(path)  # existence, encoding, emptiness
    rows: Rows = []
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        header = list(fieldnames) if fieldnames is not None else None
        if header is not None:
            _check_columns(path, header, required)
        try:
            for fields in reader:
                if header is None:
                    header = fields
                    _check_columns(path, header, required)
                    continue
                if not fields:  # blank line
                    continue
                if len(fields) != len(header):
                    hint = " (wrong delimiter? expected commas)" if len(fields) == 1 else ""
                    raise DataError(f"{path}:{reader.line_num}: expected {len(header)} comma-separated "
                                    f"fields {header}, got {len(fields)}{hint}")
                rows.append((reader.line_num, dict(zip(header, fields))))
        except csv.Error as e:
            raise DataError(f"{path}:{reader.line_num}: malformed CSV ({e})") from None
    return rows


def _json(path: Path, text: str, expected: str, line: int | None = None) -> Any:
    """``json.loads(text)``; invalid JSON raises DataError at ``path:line`` (default: the error's line)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{line or e.lineno}: invalid JSON ({e.msg} at column {e.colno}); "
                        f"expected {expected}") from None


def read_jsonl(path: str | os.PathLike, required: Iterable[str] = ()) -> Rows:
    """One JSON object per line; ``required`` keys (dotted paths allowed) must be present."""
    path = Path(path)
    required = list(required)
    rows: Rows = []
    for i, line in enumerate(_lines(path), 1):
        if not line.strip():
            raise DataError(f"{path}:{i}: blank line, expected a JSON object")
        obj = _json(path, line, "one JSON object per line", i)
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{i}: expected a JSON object, got {type(obj).__name__}")
        for key in required:
            try:
                get_path(obj, key)
            except KeyError:
                raise DataError(f"{path}:{i}: missing field {key!r}; object has {sorted(obj)}") from None
        rows.append((i, obj))
    return rows


def read_squad(path: str | os.PathLike) -> Rows:
    """SQuAD v1.1 json -> one row per question, shaped like the Hub's ``squad`` rows:
    ``{id, title, context, question, answers: {text: [...], answer_start: [...]}}``."""
    path = Path(path)
    lines = _lines(path)
    try:
        doc = json.loads("\n".join(lines))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg}); expected a SQuAD json document") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise DataError(f"{path}:1: expected a SQuAD document {{'data': [articles]}}")
    rows: Rows = []

    def items(obj: Any, key: str, where: str) -> list:
        if not isinstance(obj, dict):
            raise DataError(f"{path}: {where}: expected a JSON object, got {type(obj).__name__}")
        v = obj.get(key, [])
        if not isinstance(v, list):
            raise DataError(f"{path}: {where}.{key}: expected a list, got {type(v).__name__}")
        return v

    for a, article in enumerate(doc["data"]):
        for p, para in enumerate(items(article, "paragraphs", f"data[{a}]")):
            for q, qa in enumerate(items(para, "qas", f"data[{a}].paragraphs[{p}]")):
                where = f"data[{a}].paragraphs[{p}].qas[{q}]"
                if not isinstance(qa, dict):
                    raise DataError(f"{path}: {where}: expected a JSON object, got {type(qa).__name__}")
                try:
                    answers = qa.get("answers", [])
                    row = {"id": qa["id"], "title": article.get("title", ""), "context": para["context"],
                           "question": qa["question"],
                           "answers": {"text": [x["text"] for x in answers],
                                       "answer_start": [x.get("answer_start", -1) for x in answers]}}
                except (KeyError, TypeError) as e:
                    raise DataError(f"{path}: {where}: missing field {e}; expected id, question, "
                                    "context and answers[].text") from None
                rows.append((row["id"], row))
    if not rows:
        raise DataError(f"{path}: no questions found in SQuAD document")
    return rows


def read_bigbench(path: str | os.PathLike) -> Rows:
    """BIG-bench ``task.json`` -> one row per entry of its ``examples`` list (``input``,
    ``target_scores``, ...), ``where`` being the line the example starts on.

    Invalid JSON, a document without an ``examples`` list, or an example that is not an
    object with a string ``input`` raise DataError naming ``file:line``.
    """
    path = Path(path)
    text = read_text(path)
    if not text.strip():
        raise DataError(f"{path}: empty file, expected a BIG-bench task.json")
    doc = _json(path, text, "a BIG-bench task.json")
    if not isinstance(doc, dict) or not isinstance(doc.get("examples"), list):
        raise DataError(f"{path}:1: no 'examples' list; expected a BIG-bench task.json "
                        "{'examples': [{'input': ..., 'target_scores': {...}}, ...]}")
    if not doc["examples"]:
        raise DataError(f"{path}: the 'examples' list is empty")
    newlines = [m.start() for m in re.finditer("\n", text)]
    rows = [(bisect.bisect(newlines, pos) + 1, ex) for pos, ex in zip(_example_starts(text), doc["examples"])]
    for line, ex in rows:
        if not isinstance(ex, dict) or not isinstance(ex.get("input"), str):
            raise DataError(f"{path}:{line}: expected an example object with a string 'input', got "
                            f"{json.dumps(ex)[:80]}")
    return rows


def _example_starts(text: str) -> list[int]:
    """Where each element of the top-level ``examples`` array of a valid JSON object starts
    (the last ``examples`` key wins, as in ``json.loads``)."""
    dec, ws = json.JSONDecoder(), re.compile(r"[ \t\r\n]*")
    skip = lambda i: ws.match(text, i).end()  # noqa: E731
    starts: list[int] = []
    i = skip(skip(0) + 1)  # past "{"
    while text[i] != "}":
        key, i = dec.raw_decode(text, i)
        i = skip(skip(i) + 1)  # past ":"
        if key == "examples" and text[i] == "[":
            starts, i = [], skip(i + 1)
            while text[i] != "]":
                starts.append(i)
                i = skip(dec.raw_decode(text, i)[1])
                i = skip(i + 1) if text[i] == "," else i
            i += 1
        else:
            i = dec.raw_decode(text, i)[1]
        i = skip(i)
        i = skip(i + 1) if text[i] == "," else i
    return starts


def get_path(obj: dict, key: str) -> Any:
    """``obj['a']['b']`` for ``key='a.b'`` (KeyError if absent)."""
    for part in key.split("."):
        if not isinstance(obj, dict) or part not in obj:
            raise KeyError(key)
        obj = obj[part]
    return obj


FORMATS = {"tsv": read_tsv, "csv": read_csv, "jsonl": read_jsonl, "squad": read_squad, "bigbench": read_bigbench}


def infer_format(path: str | os.PathLike) -> str:
    name = str(path).lower()
    for ext, fmt in ((".tsv", "tsv"), (".csv", "csv"), (".jsonl", "jsonl"), (".json", "squad")):
        if name.endswith(ext):
            return fmt
    raise DataError(f"{path}: cannot tell the format from the extension; "
                    f"set format to one of {sorted(FORMATS)}")


def read_rows(path: str | os.PathLike, fmt: str | None = None, fieldnames=None, required=()) -> Rows:
    """Read ``path`` in format ``fmt`` (inferred from the extension when None)."""
    fmt = fmt or infer_format(path)
    if fmt == "tsv":
        return read_tsv(path, fieldnames, required)
    if fmt == "csv":
        return read_csv(path, fieldnames, required)
    if fmt == "jsonl":
        return read_jsonl(path, required)
    if fmt in ("squad", "bigbench"):  # documents with a fixed layout, checked by their reader
        return FORMATS[fmt](path)
    raise DataError(f"{path}: unknown format {fmt!r}; expected one of {sorted(FORMATS)}")
