"""Recipe: serve task prompts over HTTP (see mptune.serve).

    mptune serve prompts=[runs/quick/targets/full/mpt/seed-42/rte,sst2=runs/sst2] port=8000

One frozen backbone, any number of task prompts; requests of different tasks are
batched together; decoder-only backbones compute each prompt's keys/values once.
With workers > 1 (or several replicas behind a load balancer) give a shared
prompts_dir, so that adding or removing a prompt reaches every process.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..config import ConfigError, DataConfig, ModelConfig, _check, load_yaml, to_dict


@dataclass
class ServeConfig:
    """Serve task prompts over HTTP: one frozen backbone, many tasks, mixed-task batches."""

    prompts: list[str] = field(default_factory=list)
    """Prompt sources: stage folders, pipeline run folders, PEFT adapter folders or prompt files; NAME=PATH names one."""
    prompts_dir: Optional[str] = None
    """Shared folder of served sources (pointer files that POST/DELETE /tasks write and remove); every worker and
    replica using it follows its changes. Needed for add/remove with workers > 1."""
    model: Optional[ModelConfig] = None
    """Backbone (default: the one in the first prompt source's config.yaml)."""
    data: DataConfig = field(default_factory=DataConfig)
    """data.max_source_length: input tokens allowed (longer inputs are refused); data.max_target_length: generation budget."""
    host: str = "127.0.0.1"
    """Address to listen on (0.0.0.0: every interface)."""
    port: int = 8000
    """TCP port."""
    workers: int = 1
    """Worker processes (each loads the backbone; they share the port)."""
    threads: Optional[int] = None
    """Torch threads per worker (default: torch's choice)."""
    max_batch_size: int = 32
    """Inputs per model call (any mix of tasks)."""
    max_wait_ms: float = 5.0
    """How long the first input of a batch waits for others to join it."""
    max_queue: int = 1024
    """Inputs waiting at most; a request that does not fit gets 503."""
    max_inputs: int = 64
    """Inputs per request at most."""
    max_input_chars: int = 20000
    """Characters per input at most (checked before tokenising)."""
    kv_cache_mb: float = 1024.0
    """Memory for resident prompt keys/values (decoder-only backbones); least recently used tasks over it are
    recomputed when next asked for."""
    read_only: bool = False
    """Refuse POST/DELETE /tasks (403): the served prompts change only through prompts_dir or a restart."""
    access_log: bool = False
    """Log every request (uvicorn's access log)."""

    def __post_init__(self) -> None:
        _check(1 <= self.port <= 65535, "port", f"must be in 1..65535, got {self.port}")
        _check(self.workers >= 1, "workers", "must be >= 1")
        _check(self.threads is None or self.threads >= 1, "threads", "must be >= 1")
        _check(self.max_batch_size >= 1, "max_batch_size", "must be >= 1")
        _check(self.max_wait_ms >= 0, "max_wait_ms", "must be >= 0")
        _check(self.max_queue >= self.max_inputs, "max_queue", f"must be >= max_inputs ({self.max_inputs})")
        _check(self.max_inputs >= 1, "max_inputs", "must be >= 1")
        _check(self.max_input_chars >= 1, "max_input_chars", "must be >= 1")
        _check(self.kv_cache_mb >= 0, "kv_cache_mb", "must be >= 0")


def config_from_dict(d: dict) -> ServeConfig:
    """Inverse of to_dict (how worker processes receive their config)."""
    d = dict(d, data=DataConfig(**d["data"]), model=ModelConfig(**d["model"]) if d.get("model") else None)
    return ServeConfig(**d)


def default_model(cfg: ServeConfig) -> ModelConfig:
    """The backbone named by the first prompt source (its config.yaml, or a PEFT adapter's base model)."""
    from ..prompts.peft_format import CONFIG_FILE as PEFT_CONFIG
    from ..serve.app import split_spec
    from ..serve.store import prompt_units

    paths = [Path(split_spec(p)[1]) for p in cfg.prompts]
    if cfg.prompts_dir and Path(cfg.prompts_dir).is_dir():
        for e in sorted(Path(cfg.prompts_dir).iterdir()):
            if e.suffix == ".json":
                try:
                    paths.append(Path(json.loads(e.read_text(encoding="utf-8"))["path"]))
                except (OSError, ValueError, KeyError, TypeError):
                    continue  # the server skips it too, saying why (GET /health)
            elif e.is_dir() and not e.name.startswith("."):
                paths.append(e)
    for p in paths:
        for unit, _ in prompt_units(p):
            folder = unit if unit.is_dir() else unit.parent
            for cfg_file in (folder / "config.yaml", p / "config.yaml"):
                model = load_yaml(cfg_file).get("model") if cfg_file.is_file() else None
                if isinstance(model, dict) and model.get("name"):
                    return ModelConfig(**model)
            if (folder / PEFT_CONFIG).is_file():
                base = json.loads((folder / PEFT_CONFIG).read_text(encoding="utf-8")).get("base_model_name_or_path")
                if base:
                    return ModelConfig(name=base)
    raise ConfigError("model: no prompt source names a backbone (config.yaml); pass model.name=...")


def run(cfg: ServeConfig) -> None:
    import uvicorn

    from ..serve.app import CONFIG_ENV, Server, create_app
    from ..serve.store import StoreError

    if cfg.model is None:
        try:
            cfg = dataclasses.replace(cfg, model=default_model(cfg))
        except StoreError as e:
            raise ConfigError(f"prompts: {e}") from None
    opts = dict(host=cfg.host, port=cfg.port, access_log=cfg.access_log, timeout_graceful_shutdown=None)
    if cfg.workers == 1:  # load here: a bad folder is a clear error before anything listens
        try:
            server = Server(cfg)
        except StoreError as e:
            raise ConfigError(f"prompts: {e}") from None
        uvicorn.run(create_app(cfg, server), **opts)
        return
    os.environ[CONFIG_ENV] = json.dumps(to_dict(cfg))
    uvicorn.run("mptune.recipes.serve:app_from_env", factory=True, workers=cfg.workers, **opts)


def app_from_env():
    """uvicorn factory for worker processes: the ServeConfig comes as JSON in $MPTUNE_SERVE_CONFIG."""
    from ..serve.app import CONFIG_ENV, create_app

    return create_app(config_from_dict(json.loads(os.environ[CONFIG_ENV])))
