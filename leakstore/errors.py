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


class ConfigFieldError(InputError):
    """A config field holds a value it cannot take. The message names the field, as a Python caller
    wrote it (`FeaturizeConfig(crops=3)`: "crops = 3: ..."); the command line names its flag instead
    (`flagged`)."""

    def __init__(self, field: str, value, why: str):
        self.field, self.value, self.why = field, value, why
        super().__init__(f"{field} = {value!r}: {why}")

    def flagged(self, flag: str) -> str:
        """The message with the field's command-line flag in place of its name."""
        value = ",".join(map(str, self.value)) if isinstance(self.value, (tuple, list)) else self.value
        return f"{flag} {value}: {self.why}"
