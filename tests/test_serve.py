"""`mptune serve` end to end: the real server (uvicorn) in a subprocess on a free port, a tiny
model saved to a temp folder, HTTP from the test. Answers equal `mptune predict`; concurrent
mixed-task clients all get right answers; bad requests get 4xx JSON naming the field; prompts
are added and removed at run time; two workers (and two replicas) answer from the same folders;
shutdown answers what is in flight."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from mptune.cli import main  # noqa: E402
from mptune.prompts import PromptMeta, save_prompt  # noqa: E402
from mptune.prompts.decomposed import DecomposedPrompt  # noqa: E402
from mptune.prompts.peft_format import export_multitask, export_prompt_tuning  # noqa: E402
from mptune.tasks import resolve_task  # noqa: E402
from mptune.tasks.resolve import save_definitions  # noqa: E402

D, L = 32, 4  # tiny models' width; prompt length
LIMITS = ["data.max_source_length=48", "data.max_target_length=6"]
INPUTS = {  # rows as in predict's input file: template fields, or "source"
    "sst2": [{"sentence": "a charming and funny movie"}, {"sentence": "the cat sat on the mat"},
             {"source": "sst2 sentence: never drags"}, {"sentence": "red blue big small tree"},
             {"sentence": "who wrote the book"}, {"sentence": "slow"}],
    "rte": [{"sentence1": "the cat sat", "sentence2": "a cat is sitting"},
            {"sentence1": "ada wrote the book", "sentence2": "the book was written"},
            {"source": "rte sentence1: dog sentence2: cat"}, {"sentence1": "a", "sentence2": "b c d"}],
    "squad": [{"question": "who wrote the book ?", "context": "the book was written by ada in 1843"},
              {"source": "question: who ? context: ada"}],
    "urgency": [{"text": "site down"},  # a user task (examples/own_task)
                {"source": "ticket: new avatar? urgency:"}],
}
OWN_TASK = Path(__file__).resolve().parents[1] / "examples" / "own_task" / "urgency.yaml"
FOLDER_OF = {"sst2": "sst2", "rte": "multi", "squad": "multi", "urgency": "urgency"}


# -- folders -------------------------------------------------------------------------------

def _stage(folder: Path, model_dir: Path, tensors: dict, meta: PromptMeta) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_prompt(folder / "prompt.safetensors", tensors, meta)
    (folder / "config.yaml").write_text(yaml.safe_dump({"model": {"name": str(model_dir)}}))
    return folder


def make_folders(root: Path, model_dir: Path) -> dict[str, Path]:
    """sst2 (soft), multi (decomposed: rte + squad), urgency (soft, a user task whose definition the folder
    keeps), stsb (soft, another length), peft (multi exported as MULTITASK_PROMPT_TUNING), peft_rte (its rte
    row as PROMPT_TUNING), run (a pipeline-run-like tree holding copies of sst2 and multi)."""
    g = torch.Generator().manual_seed(0)
    m = str(model_dir)
    sst2 = {"prompt": torch.randn(L, D, generator=g)}
    multi = DecomposedPrompt(torch.randn(L, D, generator=g), ["rte", "squad"], 1,
                             torch.randn(2, L, 1, generator=g), torch.randn(2, 1, D, generator=g))
    f = {"sst2": _stage(root / "sst2", model_dir, sst2, PromptMeta("soft", m, L, D, ["sst2"])),
         "multi": _stage(root / "multi", model_dir, multi.state_tensors(), multi.meta(m)),
         "stsb": _stage(root / "stsb", model_dir, {"prompt": torch.randn(L + 2, D, generator=g)},
                        PromptMeta("soft", m, L + 2, D, ["stsb"])),
         "urgency": _stage(root / "urgency", model_dir, {"prompt": torch.randn(L, D, generator=g)},
                           PromptMeta("soft", m, L, D, ["urgency"]))}
    save_definitions(f["urgency"], [resolve_task(str(OWN_TASK), check_data=False)])
    kind = "seq2seq" if json.loads((model_dir / "config.json").read_text()).get("is_encoder_decoder") else "causal"
    f["peft"] = export_multitask(multi, root / "peft", kind, base_model=m)
    f["peft_rte"] = export_prompt_tuning(multi()[0].detach(), root / "peft_rte", kind, base_model=m, task="rte")
    _stage(root / "run" / "targets" / "full" / "pt" / "seed-42" / "sst2", model_dir, sst2,
           PromptMeta("soft", m, L, D, ["sst2"]))
    _stage(root / "run" / "source" / "mpt", model_dir, multi.state_tensors(), multi.meta(m))
    f["run"] = root / "run"
    return f


def predict_rows(folder: Path, task: str, tmp: Path) -> list[dict]:
    """What `mptune predict` answers for INPUTS[task] (same limits as the servers)."""
    inp, out = tmp / f"{task}.in.jsonl", tmp / f"{task}.out.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in INPUTS[task]))
    assert main(["predict", f"prompt={folder}", f"task={task}", f"input={inp}", f"output={out}", *LIMITS]) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


# -- the server in a subprocess ----------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Running:
    def __init__(self, proc: subprocess.Popen, url: str, log: Path):
        self.proc, self.url, self.log = proc, url, log

    def post(self, path: str, body=None, content: bytes | None = None) -> httpx.Response:
        kw = {"content": content, "headers": {"content-type": "application/json"}} if content is not None else {"json": body}
        return httpx.post(self.url + path, timeout=60, **kw)

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, timeout=60)

    def delete(self, path: str) -> httpx.Response:
        return httpx.delete(self.url + path, timeout=60)

    def predict(self, task: str, inputs: list) -> list[dict]:
        r = self.post("/predict", {"task": task, "inputs": inputs})
        assert r.status_code == 200, r.text
        return r.json()["outputs"]


@contextmanager
def serve(tmp: Path, *args: str, startup_s: float = 180):
    port = free_port()
    log = tmp / f"server-{port}.log"
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mptune.cli", "serve", f"port={port}", "threads=1", *LIMITS,
                                 *args], stdout=out, stderr=subprocess.STDOUT, env=env)
    s = Running(proc, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + startup_s
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if s.get("/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server did not start in {startup_s} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield s
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def same_output(got: dict, want_row: dict) -> None:
    """A server output against a predict row: same label and label scores, or same generated text."""
    if "label" in got:
        assert got["label"] == want_row["prediction"]
        assert got["label_index"] == want_row["prediction_index"]
        assert list(got["scores"]) == list(want_row["scores"])
        for label, w in want_row["scores"].items():
            assert got["scores"][label]["logprob"] == pytest.approx(w["logprob"], abs=1e-4)
            assert got["scores"][label]["prob"] == pytest.approx(w["prob"], abs=1e-4)
    else:
        assert got["text"] == want_row["prediction"]


# -- a decoder-only backbone: prompt keys/values cached -------------------------------------------

@pytest.fixture(scope="module")
def llama(tmp_path_factory, tiny_llama_dir):
    root = tmp_path_factory.mktemp("serve-llama")
    folders = make_folders(root, tiny_llama_dir)
    want = {t: predict_rows(folders[FOLDER_OF[t]], t, root) for t in INPUTS}
    with serve(root, f"prompts=[{folders['sst2']},{folders['multi']},{folders['urgency']}]",
               f"prompts_dir={root / 'served'}",
               "max_inputs=8", "max_input_chars=400", "max_wait_ms=20") as s:
        yield s, folders, want, root


def test_lists_tasks_and_health(llama):
    s, folders, _, _ = llama
    listing = s.get("/tasks").json()
    assert listing["prefix_cache"] is True and "computed once per task" in listing["prompt_path"]
    tasks = {t["name"]: t for t in listing["tasks"]}
    assert {"sst2", "rte", "squad", "urgency"} <= set(tasks)
    assert tasks["sst2"]["labels"] == ["negative", "positive"] and tasks["sst2"]["output"] == "label"
    assert tasks["urgency"]["labels"] == ["routine", "urgent"]  # a user task: its definition came with the folder
    assert tasks["squad"]["output"] == "text" and tasks["rte"]["source"] == "multi"
    for _ in range(100):  # computed when loaded (on the model thread), not at the first request
        h = s.get("/health").json()
        if h["kv_cache"]["resident_tasks"] >= 4:
            break
        time.sleep(0.1)
    assert h["status"] == "ok" and h["backbone_kind"] == "causal"
    assert h["kv_cache"]["resident_tasks"] >= 4 and h["kv_cache"]["misses"] == 4 and h["inputs_answered"] == 0


def test_answers_equal_mptune_predict(llama):
    s, _, want, _ = llama
    for task, rows in want.items():
        got = s.predict(task, INPUTS[task])
        assert len(got) == len(rows)
        for g, w in zip(got, rows):
            same_output(g, w)


def test_scores_equal_the_plain_path(llama, tiny_llama_dir):
    """Cached prompt keys/values give the plain path's log-probabilities (prompt re-run per input)."""
    from mptune.backbone import load_backbone
    from mptune.config import ModelConfig
    from mptune.prompts import load_prompt_module
    from mptune.serve.engine import Engine, Limits
    from mptune.serve.store import read_source

    s, folders, _, _ = llama
    got = s.predict("sst2", INPUTS["sst2"])
    bb = load_backbone(ModelConfig(name=str(tiny_llama_dir), fast_prefix=False))
    engine = Engine(bb, Limits(48, 400, 6), 0)
    _, tasks = read_source(folders["sst2"], bb)
    want = engine.run([engine.encode(tasks[0], r, "x") for r in INPUTS["sst2"]])
    assert not engine.prefix_cache
    for g, w in zip(got, want):
        for label in w["scores"]:
            assert g["scores"][label]["logprob"] == pytest.approx(w["scores"][label]["logprob"], abs=1e-4)
    module, _ = load_prompt_module(folders["sst2"], bb)
    assert torch.equal(tasks[0].prompt, module().detach()[0])


def test_concurrent_mixed_clients_all_answered_right(llama):
    s, _, want, _ = llama
    before = s.get("/health").json()
    errors: list = []
    sent = []

    def client(seed: int):
        rng = random.Random(seed)
        with httpx.Client(base_url=s.url, timeout=120) as c:
            for _ in range(6):
                task = rng.choice(list(INPUTS))
                idx = rng.sample(range(len(INPUTS[task])), rng.randint(1, 2))
                r = c.post("/predict", json={"task": task, "inputs": [INPUTS[task][i] for i in idx]})
                sent.append(1)
                try:
                    assert r.status_code == 200, r.text
                    outs = r.json()["outputs"]
                    assert r.json()["task"] == task and len(outs) == len(idx)
                    for o, i in zip(outs, idx):
                        same_output(o, want[task][i])
                except AssertionError as e:
                    errors.append(e)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert len(sent) == 48
    after = s.get("/health").json()
    assert after["batches"] - before["batches"] < after["inputs_answered"] - before["inputs_answered"]  # batched
    assert after["mixed_task_batches"] > before["mixed_task_batches"]  # tasks batched together


BAD = [  # (body, status, field, words in the message)
    ({"task": "nope", "inputs": ["x"]}, 404, "task", "unknown task 'nope'"),
    ({"task": 5, "inputs": ["x"]}, 422, "task", "string"),
    ({"inputs": ["x"]}, 422, "task", "Field required"),
    ({"task": "sst2", "inputs": "x"}, 422, "inputs", "list"),
    ({"task": "sst2", "inputs": []}, 422, "inputs", "no inputs"),
    ({"task": "sst2", "inputs": ["ok", 7]}, 422, "inputs[1]", "got number"),
    ({"task": "sst2", "inputs": ["ok", "  "]}, 422, "inputs[1]", "empty input"),
    ({"task": "sst2", "inputs": ["x" * 401]}, 422, "inputs[0]", "max_input_chars=400"),
    ({"task": "sst2", "inputs": [" ".join(["cat"] * 60)]}, 422, "inputs[0]", "data.max_source_length=48"),
    ({"task": "sst2", "inputs": ["x"] * 9}, 422, "inputs", "max_inputs=8"),
    ({"task": "sst2", "inputs": [{"text": "x"}]}, 422, "inputs[0]", "missing field 'sentence'"),
    ({"task": "sst2", "inputs": [{"sentence": ["x"]}]}, 422, "inputs[0].sentence", "strings or numbers"),
    ({"task": "sst2", "inputs": ["x"], "temperature": 0}, 422, "temperature", "unknown field"),
]


@pytest.mark.parametrize("body,status,field,words", BAD, ids=[f"{b[2]}-{b[1]}-{i}" for i, b in enumerate(BAD)])
def test_bad_requests_get_json_errors_naming_the_field(llama, body, status, field, words):
    s = llama[0]
    r = s.post("/predict", body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["field"] == field and words in err["message"]


def test_malformed_json_and_the_server_lives_on(llama):
    s = llama[0]
    r = s.post("/predict", content=b'{"task": "sst2", "inputs": ["x",')
    assert r.status_code == 400 and r.json()["error"]["field"] == "body" and "malformed JSON" in r.json()["error"]["message"]
    assert s.proc.poll() is None and len(s.predict("sst2", ["still here"])) == 1


def test_a_prompt_evaluated_by_generation_is_served_as_predict_answers(llama):
    """A stage whose eval.mode is generate: the server generates the label and matches it (eval.match),
    as `mptune predict` on the folder does; an unmatched text is label None, label_index -1."""
    s, folders, want, root = llama
    gen = root / "sst2_generate"
    shutil.copytree(folders["sst2"], gen)
    cfg = yaml.safe_load((gen / "config.yaml").read_text())
    (gen / "config.yaml").write_text(yaml.safe_dump({**cfg, "eval": {"mode": "generate", "match": "exact"}}))
    (root / "gen").mkdir()
    rows = predict_rows(gen, "sst2", root / "gen")
    r = s.post("/tasks", {"path": str(gen), "name": "sst2_gen"})
    assert r.status_code == 201 and r.json()["tasks"][0]["eval_mode"] == "generate", r.text
    got = s.predict("sst2_gen", INPUTS["sst2"])
    assert [g["text"] for g in got] == [w["prediction"] for w in rows]
    assert [g["label_index"] for g in got] == [w["prediction_index"] for w in rows]
    assert [g["label"] for g in got] == [("negative", "positive")[i] if i >= 0 else None
                                         for i in (w["prediction_index"] for w in rows)]
    assert "scores" not in got[0]  # nothing ranked
    assert s.delete("/tasks/sst2_gen").status_code == 200


def test_hot_add_and_remove(llama):
    s, folders, want, root = llama
    # add a task of another prompt length: it joins mixed batches with the others
    r = s.post("/tasks", {"path": str(folders["stsb"]), "name": "similarity"})
    assert r.status_code == 201, r.text
    assert [t["name"] for t in r.json()["tasks"]] == ["similarity"]
    assert (root / "served" / "similarity.json").is_file()  # the shared folder is the only state
    out = s.predict("similarity", [{"sentence1": "a cat", "sentence2": "a dog"}])
    assert isinstance(out[0]["text"], str)
    # a PEFT adapter folder and a run folder, named so their tasks do not collide
    assert s.post("/tasks", {"path": str(folders["peft"]), "name": "peft"}).status_code == 201
    assert s.post("/tasks", {"path": str(folders["peft_rte"]), "name": "rte2"}).status_code == 201
    for name in ("peft/rte", "rte2"):
        for g, w in zip(s.predict(name, INPUTS["rte"]), want["rte"]):
            same_output(g, w)
    r = s.post("/tasks", {"path": str(folders["run"]), "name": "run"})
    assert r.status_code == 201, r.text
    names = {t["name"] for t in r.json()["tasks"]}
    assert names == {"run/targets/full/pt/seed-42/sst2", "run/source/mpt/rte", "run/source/mpt/squad"}
    for g, w in zip(s.predict("run/targets/full/pt/seed-42/sst2", INPUTS["sst2"]), want["sst2"]):
        same_output(g, w)
    # conflicts and bad sources
    r = s.post("/tasks", {"path": str(folders["sst2"]), "name": "other"})
    assert r.status_code == 201 and r.json()["tasks"][0]["name"] == "other"
    r = s.post("/tasks", {"path": str(folders["stsb"])})  # served as "stsb": free
    assert r.status_code == 201
    r = s.post("/tasks", {"path": str(folders["stsb"]), "name": "similarity"})
    assert r.status_code == 201  # the same folder under the same name again: nothing to do
    r = s.post("/tasks", {"path": str(folders["sst2"]), "name": "similarity"})
    assert r.status_code == 409 and r.json()["error"]["field"] == "name"
    r = s.post("/tasks", {"path": str(root / "missing")})
    assert r.status_code == 404 and r.json()["error"]["field"] == "path"
    r = s.post("/tasks", {"path": str(root)})  # holds prompts whose tasks are served already
    assert r.status_code == 409
    r = s.delete("/tasks/rte")
    assert r.status_code == 409 and "multi" in r.json()["error"]["message"]
    # remove
    for name in ("similarity", "peft", "rte2", "run", "other", "stsb"):
        r = s.delete(f"/tasks/{name}")
        assert r.status_code == 200, r.text
    assert not (root / "served" / "similarity.json").exists()
    r = s.post("/predict", {"task": "similarity", "inputs": ["x"]})
    assert r.status_code == 404 and r.json()["error"]["field"] == "task"
    assert s.delete("/tasks/similarity").status_code == 404
    assert {t["name"] for t in s.get("/tasks").json()["tasks"]} == {"sst2", "rte", "squad", "urgency"}


def test_example_client(llama):
    s, _, want, _ = llama
    client = Path(__file__).resolve().parents[1] / "examples" / "serve" / "client.py"

    def run(*args):
        return subprocess.run([sys.executable, str(client), *args], capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, MPTUNE_URL=s.url))

    r = run("predict", "sst2", INPUTS["sst2"][2]["source"], json.dumps(INPUTS["sst2"][0]))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == [want["sst2"][2]["prediction"], want["sst2"][0]["prediction"]]
    assert "sst2" in run("tasks").stdout
    r = run("predict", "nope", "x")
    assert r.returncode == 1 and "error (task)" in r.stderr and "unknown task" in r.stderr


# -- several processes on the same folders ------------------------------------------------------

def test_two_workers_and_a_replica_answer_from_the_same_folders(llama, tmp_path):
    s, folders, want, root = llama
    shared = root / "served"
    with serve(tmp_path, f"prompts_dir={shared}", "workers=2") as two:
        pids: set = set()
        for _ in range(200):  # fresh connections: the kernel hands them to either worker
            pids |= {h.json()["pid"] for h in _parallel(lambda: two.get("/health"), 4)}
            if len(pids) == 2:
                break
        assert len(pids) == 2, "only one worker process answered"
        for g, w in zip(two.predict("sst2", INPUTS["sst2"]), want["sst2"]):
            same_output(g, w)
        # added through the first server (a replica), every worker of the second one serves it ...
        assert s.post("/tasks", {"path": str(folders["stsb"]), "name": "sim2"}).status_code == 201
        answers = _parallel(lambda: two.post("/predict", {"task": "sim2", "inputs": [{"sentence1": "a",
                                                                                     "sentence2": "b"}]}), 12)
        assert {r.status_code for r in answers} == {200} and len({r.json()["outputs"][0]["text"] for r in answers}) == 1
        # ... and removed through one worker, no process serves it any more
        assert two.delete("/tasks/sim2").status_code == 200
        assert {r.status_code for r in _parallel(lambda: two.post("/predict", {"task": "sim2", "inputs": ["x"]}), 12)} == {404}
        assert s.post("/predict", {"task": "sim2", "inputs": ["x"]}).status_code == 404


def _parallel(fn, n: int) -> list:
    out: list = [None] * n

    def run(i):
        out[i] = fn()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


# -- an encoder-decoder backbone: the plain path; shutdown drains ----------------------------------

def test_encoder_decoder_plain_path_and_shutdown_drains(tmp_path, tiny_t5_dir):
    folders = make_folders(tmp_path, tiny_t5_dir)
    want = predict_rows(folders["sst2"], "sst2", tmp_path)
    with serve(tmp_path, f"prompts=[{folders['sst2']}]", "max_wait_ms=8000", "max_batch_size=4",
               "read_only=true") as s:
        r = s.post("/tasks", {"path": str(folders["stsb"])})
        assert r.status_code == 403 and "read_only" in r.json()["error"]["message"]
        listing = s.get("/tasks").json()
        assert listing["prefix_cache"] is False and "encoder-decoder" in listing["prompt_path"]
        assert listing["tasks"][0]["prefix_cache"] is False
        for g, w in zip(s.predict("sst2", INPUTS["sst2"][:4]), want):  # a full batch: no wait
            same_output(g, w)
        # inputs wait up to 8 s for a batch to fill: SIGTERM arrives while all 3 are queued
        results: list = []
        threads = [threading.Thread(target=lambda i=i: results.append(s.post("/predict", {
            "task": "sst2", "inputs": [INPUTS["sst2"][i]]}))) for i in range(3)]
        for t in threads:
            t.start()
        while s.get("/health").json()["queued"] < 3:
            time.sleep(0.05)
        s.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join()
        assert s.proc.wait(60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once shut down
        assert sorted(r.status_code for r in results) == [200] * 3
        assert "Application shutdown complete" in s.log.read_text()


def test_cli_errors_are_clear(tmp_path, capsys):
    assert main(["serve", f"prompts=[{tmp_path / 'missing'}]"]) == 2
    err = capsys.readouterr().err
    assert "prompts" in err and "missing" in err
    assert main(["serve", "prompts=[]"]) == 2
    assert "model" in capsys.readouterr().err
    assert main(["serve", "model.name=x", "port=0"]) == 2
    assert "port" in capsys.readouterr().err
