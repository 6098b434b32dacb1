"""The ``ideogram-pipeline`` command: thin wrappers that print one clear line on error.

One module per area registers its commands on :data:`main`. Heavy libraries (Dagster,
DuckDB, boto3) are imported inside commands, so ``--help`` starts fast.
"""

from ideogram_pipeline.cli import (  # noqa: F401  (registers the commands)
    batch,
    curate,
    explore,
    history,
    lifecycle,
    lineage,
    migrate,
    operations,
    share,
    unknown,
)
from ideogram_pipeline.cli.common import main

__all__ = ["main"]
