"""Error types whose message is meant for the user (the CLI prints them without a traceback)."""

from __future__ import annotations


class TrainingError(RuntimeError):
    """A run cannot go on (non-finite loss, unsupported distributed setup); defined here so that
    sharding.py and engine.py share it without one importing the other."""


def user_errors() -> tuple[type, ...]:
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .prompts.io import PromptFileError
    from .tasks.readers import DataError

    errs: list[type] = [ConfigError, PromptFileError, DataError, TrainingError, CheckpointError]
    try:
        from .assets import AssetError

        errs.append(AssetError)
    except ImportError:
        pass
    return tuple(errs)
