"""The networks: gan.py (DCGAN generator and discriminator) and autoencoder.py (conv AE/VAE).

Only what both share lives here, so a stage that depends on one model's module and
this file never reruns when the other model changes.
"""

from __future__ import annotations


def resolution_plan(image_size: int) -> tuple[int, int]:
    """(base, n_up): the networks work at base x base (7 for 28, else 4) and double n_up times."""
    if isinstance(image_size, int) and not isinstance(image_size, bool) and image_size >= 8:
        base = 7 if image_size % 7 == 0 else 4
        n_up = (image_size // base).bit_length() - 1
        if base << n_up == image_size:
            return base, n_up
    raise ValueError(
        "image_size: expected 4 or 7 times a power of two, at least 8 "
        f"(8, 16, 28, 32, 64); got {image_size!r}"
    )
