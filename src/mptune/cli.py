"""One CLI: ``mptune <command> [config.yaml] [key=value ...]``.

Each command maps to one recipe and one typed config dataclass; options and
their ``--help`` text come from the dataclass fields and docstrings
(:func:`mptune.config.parser_for`). A YAML file and ``key=value`` / ``--key value``
overrides go through the same parser, so unknown keys and invalid values are errors.

Errors meant for the user (:class:`mptune.errors.MptuneError`) are printed
without a traceback (exit code 2); output piped into a reader that stops early
(``mptune tasks | head``) ends quietly.
"""

from __future__ import annotations

import os
import sys
from argparse import ArgumentError
from typing import Callable, Optional

from .config import ConfigError, instantiate, parser_for, to_cli_args
from .errors import MptuneError

EXIT_USAGE = 2  # bad input: the message says what to fix
EXIT_PIPE = 128 + 13  # stdout closed by its reader: what a shell reports for a tool ended by SIGPIPE


def _commands() -> dict[str, tuple[type, Callable]]:
    from .recipes import adapt, distill, evaluate, export_peft, pipeline, prompt_tune, quickstart, serve, tasks

    return {
        "prompt-tune": (prompt_tune.PromptTuneConfig, prompt_tune.run),
        "distill": (distill.DistillConfig, distill.run),
        "adapt": (adapt.AdaptConfig, adapt.run),
        "run": (pipeline.PipelineConfig, pipeline.run),
        "quickstart": (quickstart.QuickstartConfig, quickstart.run),
        "evaluate": (evaluate.EvaluateConfig, evaluate.run_evaluate),
        "predict": (evaluate.PredictConfig, evaluate.run_predict),
        "tasks": (tasks.TasksConfig, tasks.list_tasks_cmd),
        "export-peft": (export_peft.ExportPeftConfig, export_peft.run),
        "serve": (serve.ServeConfig, serve.run),
    }


def _usage(cmds: dict) -> str:
    lines = ["usage: mptune <command> [config.yaml] [key=value ...] [--help]", "", "commands:"]
    for name, (cls, _) in cmds.items():
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        lines.append(f"  {name:<14} {doc}")
    return "\n".join(lines)


def _run(argv: list[str]) -> int:
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
        return EXIT_USAGE
    cls, fn = cmds[name]
    parser = parser_for(cls, prog=f"mptune {name}")
    try:
        try:
            cfg = instantiate(parser, parser.parse_args(to_cli_args(argv[1:])), cls)
        except SystemExit as e:  # --help, or jsonargparse's own error exit
            return int(e.code or 0)
        except (ArgumentError, ValueError, TypeError) as e:  # a bad option or value: jsonargparse names it
            raise e if isinstance(e, MptuneError) else ConfigError(str(e)) from None
        fn(cfg)
    except MptuneError as e:
        print(f"mptune {name}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        code = _run(argv)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        # The reader of our output went away (`| head`): stop quietly, as Unix tools do. Point stdout at
        # /dev/null so the interpreter's final flush does not report the same error again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_PIPE


if __name__ == "__main__":
    sys.exit(main())
