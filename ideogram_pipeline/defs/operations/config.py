"""The launch settings of ``apply_operation``, as the launchpad shows them."""

import enum
from typing import Optional

import dagster as dg
from pydantic import Field

from ideogram_pipeline.batches.overrides import RenderingSpeedChoice, StyleTypeChoice
from ideogram_pipeline.ideogram.operations import OPERATIONS

__all__ = ["ApplyConfig", "OperationChoice"]

#: The operations, a drop-down in the launchpad.
OperationChoice = enum.Enum(  # type: ignore[misc]
    "OperationChoice", {name: name for name in OPERATIONS}, type=str
)


class ApplyConfig(dg.Config):
    """One operation over a selection of stored images. Settings an operation does not
    take, or values out of range, are refused before anything is sent, naming the setting
    (by the batch rules every row is read with)."""

    operation: OperationChoice = Field(description="What to do with each selected image.")
    where: str = Field(
        description="SQL condition over the `generations` view choosing the images, e.g. "
        "list_contains(tags, 'best').",
    )
    prompt: str = Field(default="", description="remix, replace_background (required); upscale.")
    resemblance: Optional[int] = Field(  # noqa: UP045  (Dagster reads the annotation)
        default=None, description="upscale: how close to the source."
    )
    detail: Optional[int] = Field(default=None, description="upscale: detail.")  # noqa: UP045
    image_weight: Optional[int] = Field(  # noqa: UP045
        default=None, description="remix: the source's weight."
    )
    resolution: str = Field(default="", description="reframe (required), remix: e.g. 1024x1024.")
    rendering_speed: Optional[RenderingSpeedChoice] = Field(  # noqa: UP045
        default=None, description="remix, reframe, replace_background."
    )
    style_type: Optional[StyleTypeChoice] = Field(default=None, description="remix.")  # noqa: UP045
    style_preset: str = Field(default="", description="remix, reframe, replace_background.")
    seed: Optional[int] = Field(default=None, description="For repeatable results.")  # noqa: UP045
    num_images: Optional[int] = Field(  # noqa: UP045
        default=None, description="Images per source (not describe/remove_background)."
    )
    max_cost_usd: Optional[float] = Field(  # noqa: UP045
        default=None, description="Refuse the run when the estimate is above this (USD)."
    )
    dry_run: bool = Field(default=False, description="Only estimate the cost; send nothing.")

    def settings(self) -> dict[str, str]:
        """The operation's settings as batch columns (unset ones left out)."""
        values = {
            "resemblance": self.resemblance,
            "detail": self.detail,
            "image_weight": self.image_weight,
            "resolution": self.resolution or None,
            "rendering_speed": self.rendering_speed.value if self.rendering_speed else None,
            "style_type": self.style_type.value if self.style_type else None,
            "style_preset": self.style_preset or None,
            "seed": self.seed,
            "num_images": self.num_images,
        }
        return {name: str(value) for name, value in values.items() if value is not None}
