"""Exception types that the command line turns into one-line messages.

Every error a user can cause (a bad name, a bad config value, a corrupt file) is raised as a subclass of
`DsnetError`, with a message that says what is wrong and what to do. The CLI prints `dsnet: error: <message>`
and exits with status 1 (2 for usage errors); a traceback is shown only under `--debug`.
"""

from __future__ import annotations

__all__ = [
    "DsnetError",
    "UnknownNameError",
    "ConfigError",
    "DataError",
    "CheckpointError",
    "TrainingDivergedError",
    "WriteError",
    "DiskFullError",
    "FolderInUseError",
    "OverwriteError",
    "NonFiniteError",
]


class DsnetError(Exception):
    """Base of every error that a user can cause and fix."""


class UnknownNameError(DsnetError, ValueError):
    """A name (model, block, objective, attack, dataset, schedule) that is not registered."""


class ConfigError(DsnetError, ValueError):
    """A recipe or override with an unknown key, a wrong type or an out-of-range value."""


class DataError(DsnetError, OSError):
    """A dataset file that is missing, truncated, corrupt or fails its checksum."""


class CheckpointError(DsnetError, ValueError):
    """A checkpoint that cannot be loaded safely: truncated, unsafe pickle, or from another model."""


class TrainingDivergedError(DsnetError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class WriteError(DsnetError, OSError):
    """A file could not be written (an unwritable folder, an I/O error); the previous version is kept."""


class DiskFullError(WriteError):
    """The disk (or quota) filled up while a file was written; the previous version of the file is kept."""


class FolderInUseError(DsnetError, RuntimeError):
    """Another dsnet process holds the lock of a run or evaluation folder."""


class OverwriteError(DsnetError, FileExistsError):
    """A command would replace a file that another command, or a person, wrote (`dsnet.runtime.ownership`)."""


class NonFiniteError(DsnetError, ArithmeticError):
    """NaN or infinite values where a number is needed: weights, logits, a normalisation or an attack's loss."""
