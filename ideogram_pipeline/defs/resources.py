"""Resources, built in one place under stable keys.

The API key is read from the environment at run time by :func:`load_settings`, never put
into resource config: Dagster stores run config in its instance, and unset must mean "use
the simulator", which a required ``EnvVar`` cannot express.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import dagster as dg

from ideogram_pipeline.settings import Settings, load_settings

__all__ = ["PipelineSettingsResource", "build_resources", "prompts_dir"]


class PipelineSettingsResource(dg.ConfigurableResource):
    """Where images and metadata go and how hard to push the API.

    Empty values mean "take it from the environment" (``IDEOGRAM_STORAGE``,
    ``IDEOGRAM_MAX_INFLIGHT``), so one code location serves every deployment.
    """

    storage: str = ""
    max_inflight: int = 0

    def settings(self) -> Settings:
        settings = load_settings(os.environ)
        if self.storage:
            settings = replace(settings, storage=self.storage)
        if self.max_inflight:
            settings = replace(settings, max_inflight=self.max_inflight)
        return settings


def prompts_dir() -> Path:
    """The folder the sensor watches: ``IDEOGRAM_PROMPTS_DIR`` or ``./prompts``."""
    return Path(os.environ.get("IDEOGRAM_PROMPTS_DIR", "prompts")).resolve()


def build_resources() -> dict[str, dg.ConfigurableResource]:
    return {"pipeline": PipelineSettingsResource()}
