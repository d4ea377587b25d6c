"""One base class for the errors whose message is meant for the user.

Every error mptune raises on purpose about bad input or a run that cannot go on
derives from :class:`MptuneError` (ConfigError, DataError, PromptFileError,
AssetError, CheckpointError, TrainingError, and the two below); the CLI catches
it once and prints the message without a traceback (exit code 2). Each also
keeps its builtin base (ValueError, RuntimeError, KeyError, FileNotFoundError),
so callers that catch those still work.

This module imports nothing from mptune, so every module can import it.
"""

from __future__ import annotations


class MptuneError(Exception):
    """An error whose message is a full sentence for the user, naming the file, key or field at fault."""

    def __str__(self) -> str:
        # The plain message, also for KeyError subclasses (KeyError.__str__ would print its repr, in quotes).
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class TrainingError(MptuneError, RuntimeError):
    """A run cannot go on (non-finite loss, unsupported distributed setup). Here, not in engine.py, so
    that sharding.py raises it without importing the training loop."""


class UnknownNameError(MptuneError, KeyError):
    """A name looked up and not found (a task in the registry or in a prompt); the message lists the valid ones."""


class MissingFileError(MptuneError, FileNotFoundError):
    """A file or folder the user named does not exist; the message names the key that named it."""
