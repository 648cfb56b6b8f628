"""Data sources, safe downloads and archives, and the canonical dataset format."""
