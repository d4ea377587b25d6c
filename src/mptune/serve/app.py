"""The HTTP API (FastAPI): predict, list/add/remove tasks, health.

    POST   /predict        {"task": "sst2", "inputs": ["a gorgeous, witty, seductive movie.", {...}]}
    GET    /tasks          served tasks: kind, labels, template, source folder, prompt path
    POST   /tasks          {"path": "runs/x/targets/full/mpt/seed-42/rte", "name": "optional"} -> 201
    DELETE /tasks/{name}   a source by its name (or by its only task's name)
    GET    /health         status, pid, model, queue, resident prompt keys/values

Errors are JSON ``{"error": {"field": "inputs[2]", "message": "..."}}``: 400 malformed
JSON, 404 unknown task or source, 409 name conflicts, 422 invalid fields or inputs,
503 queue full or shutting down (with Retry-After), 500 an input the model failed on
(the server goes on). The server keeps no state but its prompt folders.
"""

from __future__ import annotations

import asyncio
import logging
import os
from contextlib import asynccontextmanager
from typing import Any, Optional

import anyio
import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from .. import __version__
from .batcher import Batcher, Closed, QueueFull
from .engine import Engine, InputError, Limits
from .store import PromptStore, StoreError

log = logging.getLogger(__name__)
CONFIG_ENV = "MPTUNE_SERVE_CONFIG"  # worker processes read their ServeConfig (JSON) here


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task: StrictStr = Field(description="A served task name (GET /tasks).")
    inputs: list[Any] = Field(description="Each a model input string, or an object of the task template's fields "
                                          "(as a line of `mptune predict`'s input file).")


class AddRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: StrictStr = Field(description="Stage folder, pipeline run folder, PEFT adapter folder or prompt file "
                                        "(a path on the server's machine).")
    name: Optional[StrictStr] = Field(None, description="Source name; prefixes its served task names.")


class Server:
    """Backbone + prompt store + engine + batcher: everything a worker process holds."""

    def __init__(self, cfg):
        from ..backbone import load_backbone

        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.cfg = cfg
        self.backbone = load_backbone(cfg.model)
        self.backbone.model.to("cuda" if torch.cuda.is_available() else "cpu")
        limits = Limits(cfg.data.max_source_length, cfg.max_input_chars, cfg.data.max_target_length)
        self.engine = Engine(self.backbone, limits, int(cfg.kv_cache_mb * 2**20))
        self.store = PromptStore(self.backbone, cfg.prompts_dir, on_unload=self.engine.forget)
        self.batcher = Batcher(self.engine.run, cfg.max_batch_size, cfg.max_wait_ms / 1000, cfg.max_queue)
        for spec in cfg.prompts:
            name, path = split_spec(spec)
            self.store.add(path, name)
        self.store.sync(force=True)
        self.warm(self.store.list())

    def warm(self, tasks, chunk: int = 16) -> None:
        """Compute the tasks' prompt keys/values on the model thread, a chunk at a time between batches."""
        for i in range(0, len(tasks), chunk):
            self.batcher.call(lambda part=tasks[i: i + chunk]: self.engine.warm(part))

    def close(self) -> None:
        self.batcher.close()

    def health(self) -> dict:
        return {"status": "ok", "pid": os.getpid(), "version": __version__, "model": self.backbone.name,
                "backbone_kind": self.backbone.kind.value, "prefix_cache": self.engine.prefix_cache,
                "tasks": len(self.store.tasks), "sources": len(self.store.sources), "queued": self.batcher.queued,
                "batches": self.batcher.batches, "inputs_answered": self.batcher.items_done,
                "mixed_task_batches": self.engine.mixed_task_batches,
                "kv_cache": self.engine.cache.stats(), "skipped": dict(self.store.skipped)}

    def task_list(self) -> dict:
        cached = self.engine.prefix_cache
        how = ("prompt keys/values computed once per task and reused (decoder-only backbone)" if cached else
               "plain: [prompt ; input] runs through the model for every input ("
               + ("encoder-decoder backbone: its encoder is bidirectional, so the prompt's states depend on the "
                  "input)" if self.backbone.kind.value == "seq2seq" else "this model does not support the "
                                                                          "shared-prefix cache)"))
        return {"model": self.backbone.name, "backbone_kind": self.backbone.kind.value, "prefix_cache": cached,
                "prompt_path": how, "tasks": [dict(t.info(), prefix_cache=cached) for t in self.store.list()]}


def split_spec(spec: str) -> tuple[Optional[str], str]:
    """'NAME=PATH' -> (NAME, PATH); 'PATH' -> (None, PATH)."""
    name, sep, path = spec.partition("=")
    if sep and name and "/" not in name and os.sep not in name:
        return name, path
    return None, spec


def _error(status: int, message: str, field: Optional[str] = None, headers: Optional[dict] = None) -> JSONResponse:
    return JSONResponse({"error": {"field": field, "message": message}}, status_code=status, headers=headers)


def _field(loc) -> str:
    out = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def create_app(cfg, server: Optional[Server] = None) -> FastAPI:
    """The app; `server` already started (one process), or started in the lifespan (worker processes)."""
    holder: dict[str, Server] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        holder["s"] = server or await anyio.to_thread.run_sync(Server, cfg)
        yield
        await anyio.to_thread.run_sync(holder["s"].close)  # uvicorn has waited for open requests already

    app = FastAPI(title="mptune serve", version=__version__, lifespan=lifespan,
                  description="Many task prompts on one frozen backbone.")

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        err = exc.errors()[0]
        if err.get("type") == "json_invalid":
            return _error(400, f"malformed JSON: {err.get('ctx', {}).get('error', err.get('msg'))}", "body")
        field = _field(err.get("loc", ()))
        if err.get("type") == "extra_forbidden":
            return _error(422, f"{field}: unknown field", field)
        return _error(422, f"{field}: {err.get('msg')}", field)

    @app.exception_handler(StoreError)
    async def store_error(request: Request, exc: StoreError):
        return _error(exc.status, str(exc), exc.field)

    @app.exception_handler(InputError)
    async def input_error(request: Request, exc: InputError):
        return _error(422, str(exc), exc.field)

    @app.exception_handler(QueueFull)
    @app.exception_handler(Closed)
    async def busy(request: Request, exc: Exception):
        return _error(503, str(exc), None, {"Retry-After": "1"})

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception):
        return _error(500, f"internal error: {type(exc).__name__}: {exc}")

    async def synced() -> Server:
        s = holder["s"]
        if s.store.dir is not None:
            loaded = await anyio.to_thread.run_sync(s.store.sync)
            if loaded:
                s.warm([t for src in loaded for t in src.tasks])
        return s

    @app.post("/predict")
    async def predict(req: PredictRequest):
        s = await synced()
        task = s.store.get(req.task)
        if not req.inputs:
            raise InputError("inputs", "no inputs; give at least one")
        if len(req.inputs) > s.cfg.max_inputs:
            raise InputError("inputs", f"{len(req.inputs)} inputs; the limit is max_inputs={s.cfg.max_inputs}")
        items = [s.engine.encode(task, v, f"inputs[{i}]") for i, v in enumerate(req.inputs)]
        outs = await asyncio.gather(*(asyncio.wrap_future(f) for f in s.batcher.submit(items)))
        return {"task": task.name, "outputs": outs}

    @app.get("/tasks")
    async def tasks():
        return (await synced()).task_list()

    def changeable(s: Server) -> None:
        if s.cfg.read_only:
            raise StoreError("this server is read_only: adding and removing prompts over HTTP is off", 403)
        if s.cfg.workers > 1 and s.store.dir is None:
            raise StoreError(f"this server runs {s.cfg.workers} worker processes without a prompts_dir, so a change "
                             "would reach one of them only; restart it with prompts_dir=...", 409)

    @app.post("/tasks", status_code=201)
    async def add(req: AddRequest):
        s = await synced()
        changeable(s)
        src = await anyio.to_thread.run_sync(s.store.add, req.path, req.name)
        s.warm(src.tasks)  # in the background: requests for them are answered meanwhile (computed on demand)
        return {"source": src.name, "path": str(src.path), "tasks": [t.info() for t in src.tasks]}

    @app.delete("/tasks/{name:path}")
    async def remove(name: str):
        s = await synced()
        changeable(s)
        src = await anyio.to_thread.run_sync(s.store.remove, name)
        return {"removed": src.name, "tasks": [t.name for t in src.tasks]}

    @app.get("/health")
    async def health():
        return (await synced()).health()

    return app
