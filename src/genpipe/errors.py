"""Errors a user can cause. Each prints as one line and exits non-zero."""

from __future__ import annotations


class GenpipeError(Exception):
    """An error with a one-line message that names what was expected and what was found.

    Whitespace runs (newlines from a wrapped library message, say) become one space.
    """

    exit_code = 1

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def exception_text(exc: BaseException) -> str:
    """'TypeName: message' for quoting another library's exception inside a GenpipeError."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class ParamsError(GenpipeError):
    """params.yaml does not match the schema."""

    exit_code = 2


class DataError(GenpipeError):
    """Input data (files, folders, archives) that cannot be read as expected."""


class DownloadError(DataError):
    """A file could not be fetched from any mirror, or failed its checksum."""


class ValidationFailed(GenpipeError):
    """The prepared dataset failed one or more expectations."""


class MetricsError(GenpipeError):
    """Evaluation inputs that do not fit: statistics of other dimensions, a weights file
    that is not the expected network, too few samples for a metric."""


class TrainingError(GenpipeError):
    """Training cannot start or go on (bad checkpoint, non-finite loss, missing device)."""


class TrackingError(GenpipeError):
    """The MLflow tracking store cannot be used (unreachable, malformed URI, failed write)."""
