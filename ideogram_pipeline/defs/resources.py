"""Resources, built in one place under stable keys.

The API key is read from the environment at run time by :func:`load_settings`, never put
into resource config: Dagster stores run config in its instance, and unset must mean "use
the simulator", which a required ``EnvVar`` cannot express. S3 goes through dagster-aws's
``S3Resource``: AWS credentials that are set in the environment enter as ``EnvVar`` (so
Dagster's snapshots hold the variable names, never the values), unset ones are left to
boto3's chain (profile, role), and every field can be set per deployment or per run in the
UI's resource config. Never type a secret into that config: use an ``EnvVar`` there too.
"""

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import dagster as dg
from dagster_aws.s3 import S3Resource

from ideogram_pipeline.settings import Settings, load_settings
from ideogram_pipeline.storage import LocalStore, ObjectStore

__all__ = ["PipelineSettingsResource", "StorageResource", "build_resources", "prompts_dir"]


class PipelineSettingsResource(dg.ConfigurableResource["PipelineSettingsResource"]):
    """How hard to push the API. Empty values mean "take it from the environment"."""

    max_inflight: int = 0

    def settings(self) -> Settings:
        settings = load_settings(os.environ)
        if self.max_inflight:
            settings = replace(settings, max_inflight=self.max_inflight)
        return settings


class StorageResource(dg.ConfigurableResource["StorageResource"]):
    """Where images and metadata go: ``root`` or ``IDEOGRAM_STORAGE`` (local path or S3)."""

    root: str = ""
    s3: dg.ResourceDependency[S3Resource]

    def resolve(self, settings: Settings) -> Settings:
        return replace(settings, storage=self.root) if self.root else settings

    def open(self, settings: Settings) -> ObjectStore:
        """The store for the resolved root; S3 clients come from the ``S3Resource``."""
        settings = self.resolve(settings)
        if not settings.is_s3:
            return LocalStore(settings.storage)
        from ideogram_pipeline.storage.s3 import S3Store, parse_s3_uri

        bucket, prefix = parse_s3_uri(settings.storage)
        store = S3Store(
            self.s3.get_client(),
            bucket,
            prefix,
            root=settings.storage.rstrip("/"),
            sse=settings.s3_sse_spec,
        )
        store._secret = settings.aws_secret_access_key or self.s3.aws_secret_access_key
        return store


def prompts_dir() -> Path:
    """The folder the sensor watches: ``IDEOGRAM_PROMPTS_DIR`` or ``./prompts``."""
    return Path(os.environ.get("IDEOGRAM_PROMPTS_DIR", "prompts")).resolve()


def _secret_from_env(name: str) -> dg.EnvVar | None:
    """``EnvVar(name)`` when the variable is set, so Dagster's config snapshots hold the
    variable's name, never its value; unset leaves boto3's chain (profile, role) in charge."""
    return dg.EnvVar(name) if os.environ.get(name) else None


def build_resources() -> dict[str, dg.ConfigurableResource[Any]]:
    s3 = S3Resource(
        aws_access_key_id=_secret_from_env("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=_secret_from_env("AWS_SECRET_ACCESS_KEY"),
        aws_session_token=_secret_from_env("AWS_SESSION_TOKEN"),
    )
    return {"pipeline": PipelineSettingsResource(), "storage": StorageResource(s3=s3), "s3": s3}


@dg.definitions
def defs() -> dg.Definitions:
    """The resources, for ``load_from_defs_folder`` (a module-level resource is not found)."""
    return dg.Definitions(resources=build_resources())
