"""Data sources, safe downloads and the canonical dataset format."""

from genpipe.data.canonical import Prepared, read_prepared, write_prepared
from genpipe.data.sources import fetch_dataset

__all__ = ["Prepared", "fetch_dataset", "read_prepared", "write_prepared"]
