"""A small client for `mptune serve` (standard library only).

    mptune serve prompts=[runs/quick] port=8000        # in another shell
    python examples/serve/client.py tasks
    python examples/serve/client.py predict sst2 "a gorgeous, witty, seductive movie."
    python examples/serve/client.py add runs/other/targets/full/mpt/seed-42/rte --name rte-v2
    python examples/serve/client.py remove rte-v2

Set MPTUNE_URL (default http://127.0.0.1:8000) to reach another server.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request

URL = os.environ.get("MPTUNE_URL", "http://127.0.0.1:8000")


class ServeError(RuntimeError):
    """The server refused a request; `field` names the request field it blames."""

    def __init__(self, status: int, error: dict):
        super().__init__(f"HTTP {status}: {error.get('message')}")
        self.status, self.field = status, error.get("field")


def call(method: str, path: str, body: dict | None = None, url: str = URL) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:  # 4xx/5xx: the body says which field and why
        raise ServeError(e.code, json.loads(e.read()).get("error", {})) from None


def predict(task: str, inputs: list, url: str = URL) -> list[dict]:
    """One output per input: {"label", "label_index", "scores": {label: {"logprob", "prob"}}} or {"text"}."""
    return call("POST", "/predict", {"task": task, "inputs": inputs}, url)["outputs"]


def tasks(url: str = URL) -> list[dict]:
    return call("GET", "/tasks", url=url)["tasks"]


def add(path: str, name: str | None = None, url: str = URL) -> list[str]:
    return [t["name"] for t in call("POST", "/tasks", {"path": path, "name": name}, url)["tasks"]]


def remove(name: str, url: str = URL) -> list[str]:
    return call("DELETE", "/tasks/" + urllib.parse.quote(name), url=url)["tasks"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Talk to an mptune server.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("tasks")
    p = sub.add_parser("predict")
    p.add_argument("task")
    p.add_argument("inputs", nargs="+", help="input texts (or JSON objects of the task's template fields)")
    p = sub.add_parser("add")
    p.add_argument("path")
    p.add_argument("--name")
    sub.add_parser("remove").add_argument("name")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "tasks":
            for t in tasks():
                print(f"{t['name']:<30} {t['output']:<6} {', '.join(t['labels'] or [])}")
        elif a.cmd == "predict":
            inputs = [json.loads(x) if x.startswith("{") else x for x in a.inputs]
            for x, out in zip(a.inputs, predict(a.task, inputs)):
                if "label" in out:
                    probs = ", ".join(f"{k} {v['prob']:.3f}" for k, v in out["scores"].items())
                    print(f"{out['label']}\t({probs})\t{x}")
                else:
                    print(f"{out['text']}\t{x}")
        elif a.cmd == "add":
            print("serving:", ", ".join(add(a.path, a.name)))
        else:
            print("removed:", ", ".join(remove(a.name)))
    except ServeError as e:
        print(f"error ({e.field}): {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
