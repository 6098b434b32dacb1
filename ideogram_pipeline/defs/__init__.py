"""The Dagster layer, one folder per area and one file per Dagster kind.

``definitions.py`` loads this folder with ``dg.load_from_defs_folder``: every module here is
imported and the assets, checks, jobs, schedules and sensors it defines at module level are
collected (``resources.py`` returns its resources from a ``@dg.definitions`` function). The
work itself is plain Python outside this folder (``runs/``, ``history/``, ``lifecycle/``,
``reports/``), testable without Dagster; these modules wire config, resources, partitions
and schedules around it.

- ``batches/``: the ``batch_images`` asset (one dynamic partition per CSV file), its checks,
  ``batch_job`` and the prompts-folder sensor.
- ``lifecycle/``: the history and usage-report assets with the history checks, and the
  maintenance jobs (retention cleanup, compaction) with their daily schedules.
- ``resources.py``: the resources, built once under stable keys.
"""
