"""What the lifecycle definitions share: the resolved settings and store, the policy."""

import os

import dagster as dg

from ideogram_pipeline.defs.resources import PipelineSettingsResource, StorageResource
from ideogram_pipeline.lifecycle.policy import (
    LifecycleConfig,
    LifecycleError,
    load_lifecycle_config,
)
from ideogram_pipeline.settings import Settings, SettingsError
from ideogram_pipeline.storage import ObjectStore, StorageError

__all__ = ["GROUP", "lifecycle_config", "open_root"]

GROUP = "lifecycle"


def open_root(
    pipeline: PipelineSettingsResource, storage: StorageResource
) -> tuple[Settings, ObjectStore]:
    """The settings and the store of the storage root; a bad setting fails the run, named."""
    try:
        settings = storage.resolve(pipeline.settings())
        return settings, storage.open(settings)
    except (SettingsError, StorageError) as exc:
        raise dg.Failure(str(exc)) from None


def lifecycle_config() -> LifecycleConfig:
    """``retention.toml`` and its environment overrides, read when a run needs them."""
    try:
        return load_lifecycle_config(os.environ)
    except LifecycleError as exc:
        raise dg.Failure(str(exc)) from None
