"""The networks' config.json schemas: their constructor kwargs, beside their weights.

A file genpipe did not necessarily write: held to the params' bounds before any network is
built (weights.build_network), so a width of 1e9 is one line, not a 4 TB allocation.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError

from genpipe.params.messages import describe, kind_of
from genpipe.params.schema import (
    MAX_CLASSES,
    MAX_DEPTH,
    MAX_LATENT,
    MAX_WIDTH,
    AutoencoderKind,
    ImageSize,
    NoBool,
    Section,
)


class GeneratorConfig(Section):
    image_size: Annotated[ImageSize, NoBool]
    channels: Annotated[Literal[1, 3], NoBool]
    z_dim: int = Field(ge=1, le=MAX_LATENT)
    width: int = Field(ge=1, le=MAX_WIDTH)
    depth: int = Field(0, ge=0, le=MAX_DEPTH)
    class_weights: list[Annotated[float, Field(gt=0, le=1)]] | None = Field(
        None, min_length=1, max_length=MAX_CLASSES
    )


class AutoEncoderConfig(Section):
    image_size: Annotated[ImageSize, NoBool]
    channels: Annotated[Literal[1, 3], NoBool]
    latent_dim: int = Field(ge=1, le=MAX_LATENT)
    width: int = Field(ge=1, le=MAX_WIDTH)
    depth: int = Field(0, ge=0, le=MAX_DEPTH)
    kind: AutoencoderKind = "ae"


class DomainConfig(Section):
    image_size: Annotated[ImageSize, NoBool]
    channels: Annotated[Literal[1, 3], NoBool]
    num_classes: int = Field(ge=2, le=MAX_CLASSES)
    width: int = Field(ge=1, le=MAX_WIDTH)
    feature_dim: int = Field(ge=2, le=MAX_LATENT)


def check_config(schema: type[Section], config: Any, key: str) -> dict[str, Any]:
    """A network's config.json entry held to `schema`; ValueError with one line naming
    `key`.<field>, what it allows and what it found."""
    if not isinstance(config, dict):
        raise ValueError(f"{key}: expected a mapping of keys; got {kind_of(config)}")
    try:
        return schema.model_validate(config).model_dump()
    except ValidationError as exc:
        raise ValueError(f"{key}.{describe(exc)}") from None

