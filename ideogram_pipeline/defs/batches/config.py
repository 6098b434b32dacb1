"""The launch settings of one batch run, as the launchpad shows them."""

from typing import Optional

import dagster as dg
from pydantic import Field

from ideogram_pipeline.batches.overrides import (
    ModelChoice,
    RenderingSpeedChoice,
    RunOverrides,
    StyleTypeChoice,
)

__all__ = ["BatchConfig"]


class BatchConfig(dg.Config):
    """Launch settings of one batch run (the launchpad shows each field with its default).

    Enum fields are drop-downs: Dagster rejects any other value, naming the field, before
    the run starts. Overrides replace that field on every row and re-validate the row.
    """

    csv_path: str = Field(
        default="",
        description="Batch file (CSV, XLSX or XLS). Empty: the file in the prompts folder "
        "named by the partition.",
    )
    model: Optional[ModelChoice] = Field(  # noqa: UP045  (Dagster reads the annotation)
        default=None,
        description="Model for every row instead of the CSV's. A legacy model drops the rows' "
        "rendering speed (V_3 only).",
    )
    rendering_speed: Optional[RenderingSpeedChoice] = Field(  # noqa: UP045
        default=None,
        description="Rendering speed for every row (V_3 only; other models' rows are rejected).",
    )
    style_type: Optional[StyleTypeChoice] = Field(  # noqa: UP045
        default=None,
        description="Style type for every row; a row whose model does not take it is rejected.",
    )
    max_cost_usd: Optional[float] = Field(  # noqa: UP045
        default=None,
        description="Refuse the run, before sending anything, when the estimated cost of the "
        "rows to send is above this (USD).",
    )
    force: bool = Field(
        default=False,
        description="Generate rows whose exact request (explicit seed) is already stored in "
        "another batch, instead of linking them to the stored image at no cost.",
    )
    resend_unknown: bool = Field(
        default=False,
        description="Send again rows whose earlier request got no recorded answer (status "
        "unknown: the run stopped mid-request, so they may have been billed already).",
    )
    dry_run: bool = Field(
        default=False,
        description="Only estimate the cost (recorded as an observation); send nothing.",
    )

    def overrides(self) -> RunOverrides:
        return RunOverrides(
            model=self.model.value if self.model else None,
            rendering_speed=self.rendering_speed.value if self.rendering_speed else None,
            style_type=self.style_type.value if self.style_type else None,
        )
