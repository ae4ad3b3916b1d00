"""Typed errors of the load generator. `tandem bench` prints each as one line and exits 2."""

from __future__ import annotations

from services.engine.errors import ConfigError, TandemError


class BenchConfigError(ConfigError):
    """A flag value is out of range or inconsistent with another; names the flag."""

    def __init__(self, flag: str, message: str) -> None:
        super().__init__(f"{flag}: {message}")
        self.flag = flag


class DatasetError(TandemError):
    """A dataset file is missing, unreadable or holds no usable prompt."""


class TargetUnreachableError(TandemError):
    """The server does not answer at the given address (checked once, before the run)."""


class ResultFileError(TandemError):
    """A result file given to `tandem bench compare` cannot be read or is not a bench result."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
