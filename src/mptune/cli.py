"""One CLI: ``mptune <command> [config.yaml] [key=value ...]``.

Each command maps to one recipe and one typed config dataclass; options and
their ``--help`` text come from the dataclass fields and docstrings
(jsonargparse). A YAML file and ``key=value`` / ``--key value`` overrides go
through the same parser, so unknown keys and invalid values are errors.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import Callable, Optional

import jsonargparse
from jsonargparse import ActionConfigFile, ArgumentParser

jsonargparse.set_parsing_settings(docstring_parse_attribute_docstrings=True)

_OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")


@dataclass
class TasksConfig:
    """List the task registry: group, source, sizes and metrics."""

    group: Optional[str] = None
    """Only tasks of this group (glue, superglue, mrqa, others, ...)."""
    data_dir: Optional[str] = None
    """Folder of original files: count examples from the files found there."""


def _commands() -> dict[str, tuple[type, Callable]]:
    from .recipes import adapt, distill, evaluate, pipeline, prompt_tune, quickstart, serve
    from .recipes.tasks import list_tasks_cmd

    cmds = {
        "prompt-tune": (prompt_tune.PromptTuneConfig, prompt_tune.run),
        "distill": (distill.DistillConfig, distill.run),
        "adapt": (adapt.AdaptConfig, adapt.run),
        "run": (pipeline.PipelineConfig, pipeline.run),
        "quickstart": (quickstart.QuickstartConfig, quickstart.run),
        "evaluate": (evaluate.EvaluateConfig, evaluate.run_evaluate),
        "predict": (evaluate.PredictConfig, evaluate.run_predict),
        "tasks": (TasksConfig, list_tasks_cmd),
        "serve": (serve.ServeConfig, serve.run),
    }
    try:
        from .recipes import export_peft

        cmds["export-peft"] = (export_peft.ExportPeftConfig, export_peft.run)
    except ImportError:  # pragma: no cover - arrives with the PEFT exporter
        pass
    return cmds


def parser_for(cls: type, prog: Optional[str] = None) -> ArgumentParser:
    parser = ArgumentParser(prog=prog, description=(cls.__doc__ or "").strip(), exit_on_error=False,
                            default_env=False)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML config file (later options override it).")
    parser.add_class_arguments(cls, fail_untyped=True, sub_configs=True)
    return parser


def to_cli_args(args: list[str]) -> list[str]:
    """`cfg.yaml` -> `--config cfg.yaml`; `a.b=c` -> `--a.b=c`; the rest unchanged."""
    out: list[str] = []
    for a in args:
        if _OVERRIDE.match(a):
            out.append("--" + a)
        elif not a.startswith("-") and a.endswith((".yaml", ".yml")) and not (out and out[-1].startswith("--") and "=" not in out[-1]):
            out += ["--config", a]
        else:
            out.append(a)
    return out


def _usage(cmds: dict) -> str:
    lines = ["usage: mptune <command> [config.yaml] [key=value ...] [--help]", "", "commands:"]
    for name, (cls, _) in cmds.items():
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        lines.append(f"  {name:<14} {doc}")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    from .config import ConfigError, instantiate

    argv = list(sys.argv[1:] if argv is None else argv)
    cmds = _commands()
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(_usage(cmds))
        return 0
    if argv[0] in {"-V", "--version"}:
        from . import __version__

        print(__version__)
        return 0
    name = argv[0]
    if name not in cmds:
        print(f"mptune: unknown command {name!r}; valid commands: {', '.join(cmds)}", file=sys.stderr)
        return 2
    cls, fn = cmds[name]
    parser = parser_for(cls, prog=f"mptune {name}")
    try:
        ns = parser.parse_args(to_cli_args(argv[1:]))
        cfg = instantiate(parser, ns, cls)
    except SystemExit as e:  # --help, or jsonargparse's own error exit
        return int(e.code or 0)
    except (ConfigError, ValueError, TypeError, jsonargparse.ArgumentError) as e:
        print(f"mptune {name}: error: {e}", file=sys.stderr)
        return 2
    try:
        fn(cfg)
    except (ConfigError, FileNotFoundError) as e:
        print(f"mptune {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyError as e:  # unknown task / prompt task names: the message lists the valid ones
        if not (e.args and isinstance(e.args[0], str) and " " in e.args[0]):
            raise
        print(f"mptune {name}: error: {e.args[0]}", file=sys.stderr)
        return 2
    except Exception as e:  # errors we raise on purpose carry a full sentence; show it, not a traceback
        from .errors import user_errors

        if isinstance(e, user_errors()):
            print(f"mptune {name}: error: {e}", file=sys.stderr)
            return 2
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
