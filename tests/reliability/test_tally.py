"""The committed tally (tally.json, tally.md, README tables) agrees with itself and with the tests:
every kind the tests count is described, and what the READMEs quote is what tally.json holds."""

import json
import re

from .tally import BEGIN, END, HERE, KINDS, markdown, summarise

ROOT = HERE.parent.parent


def committed() -> dict:
    return json.loads((HERE / "tally.json").read_text())


def test_every_kind_the_tests_count_is_described():
    called = set()
    for f in HERE.glob("test_*.py"):
        called |= set(re.findall(r'tally\(\s*"([^"]+)"', f.read_text()))
    assert called and not called - set(KINDS), called - set(KINDS)


def test_tally_files_agree():
    t = committed()
    assert summarise({r["kind"]: r["tried"] for r in t["kinds"]}) == t  # totals and kills from the kinds
    md = markdown(t)
    assert (HERE / "tally.md").read_text() == "# Reliability tally\n\n" + md
    readme = (HERE / "README.md").read_text()
    assert readme.split(BEGIN, 1)[1].split(END, 1)[0] == "\n" + md


def test_main_readme_quotes_the_tally():
    tot = committed()["totals"]
    text = (ROOT / "README.md").read_text()
    section = text.split("## Reliability", 1)[1].split("\n## ", 1)[0]
    assert f"Faults injected: {tot['faults']:,}, all handled" in section
    assert f"Bad inputs tried: {tot['bad inputs']:,}, all handled" in section
