"""Errors a user can cause. Each prints as one line and exits non-zero."""

from __future__ import annotations

import errno
import re
from collections.abc import Iterator


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


def causes(exc: BaseException | None) -> Iterator[BaseException]:
    """The exception, then its causes and contexts (unless suppressed: `from None`), each
    once."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
# numpy's short writes: "Not enough free space to write N bytes", "N requested and M written"
_NUMPY_FULL = re.compile(r"Not enough free space|\d+ requested and \d+ written")


def disk_full(exc: BaseException) -> OSError | None:
    """The OSError of a full disk (or quota) among the exception and its causes: torch
    reports a failed write as RuntimeError with the ENOSPC in its context, numpy as
    "Not enough free space to write N bytes", safetensors in its own error's message."""
    for cause in causes(exc):
        text = " ".join(str(cause).split())
        if isinstance(cause, OSError) and (cause.errno in DISK_FULL or _NUMPY_FULL.search(text)):
            return cause
        if "No space left on device" in text or "Disk quota exceeded" in text:  # safetensors
            return OSError(errno.ENOSPC, text)
    return None


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


class DiskFullError(GenpipeError):
    """No space left where an output was being written: the earlier output is kept."""

    def __init__(self, where: str, exc: BaseException):
        said = getattr(exc, "strerror", None) or " ".join(str(exc).split())
        super().__init__(f"{where}: no space left on the device to write it ({said}); free "
                         "space there and rerun: the earlier output is kept as it was")


class TrackingError(GenpipeError):
    """The MLflow tracking store cannot be used (unreachable, malformed URI, failed write)."""


class RegistryError(GenpipeError):
    """The registry cannot be used or updated (server down, missing outputs, failed call)."""
