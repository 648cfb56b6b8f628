"""The resolution plan both networks follow (gan/network.py, autoencoder/network.py).

It shapes both models, so it is a module of its own: editing it reruns both models'
stages and changes both checkpoints' code identity; editing one model's package reruns
only that model's.
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
