"""Error types whose message is meant for the user (the CLI prints them without a traceback)."""

from __future__ import annotations


def user_errors() -> tuple[type, ...]:
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .engine import TrainingError
    from .prompts.io import PromptFileError
    from .tasks.readers import DataError

    errs: list[type] = [ConfigError, PromptFileError, DataError, TrainingError, CheckpointError]
    try:
        from .assets import AssetError

        errs.append(AssetError)
    except ImportError:
        pass
    return tuple(errs)
