"""The project's expected failures: each is one clear line for the user, never a traceback.

Anything else that escapes a stage is a bug (ours, or a library's) and keeps its traceback.
"""


class KdistillError(Exception):
    """An expected failure: bad input, unusable data, an unreachable service, a diverged training."""


class ConfigError(KdistillError):
    """params.yaml (or another user input) is invalid; the message says what and where."""


class DataError(KdistillError):
    """The archive, a prepared file or a model file is missing or unusable; the message says why."""


class TrainingError(KdistillError):
    """Training cannot go on (a non-finite loss); the message names stage and epoch."""


class TrackingError(KdistillError):
    """The tracking server or store cannot be used; the message names the URI."""
