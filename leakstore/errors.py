"""One exception hierarchy for leakstore. Every message says what to do next."""
from __future__ import annotations


class LeakstoreError(Exception):
    """Base class: the CLI prints these as one line, without a traceback."""


class StoreError(LeakstoreError):
    """A feature store is missing, unreadable or not a leakstore store."""


class ConfigMismatchError(StoreError):
    """A store was made with another featurize config than the one asked for."""


class ImageDecodeError(LeakstoreError):
    """One image could not be turned into pixels; recorded per row, never fatal to a run."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class WeightsNotFoundError(LeakstoreError):
    """VAE weights cannot be found locally and cannot be downloaded."""


class InputError(LeakstoreError):
    """A data set, manifest or option is malformed."""


class Interrupted(LeakstoreError):
    """Ctrl-C: the message says what was kept and how to continue (the CLI exits with 130)."""
