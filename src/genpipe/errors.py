"""Errors a user can cause. Each prints as one line and exits non-zero."""

from __future__ import annotations


class GenpipeError(Exception):
    """An error with a one-line message that names what was expected and what was found."""

    exit_code = 1


class ParamsError(GenpipeError):
    """params.yaml does not match the schema."""

    exit_code = 2


class DataError(GenpipeError):
    """Input data (files, folders, archives) that cannot be read as expected."""


class DownloadError(DataError):
    """A file could not be fetched from any mirror, or failed its checksum."""


class ValidationFailed(GenpipeError):
    """The prepared dataset failed one or more expectations."""
