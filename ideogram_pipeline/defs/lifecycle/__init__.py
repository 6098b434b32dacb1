"""The lifecycle in Dagster: the history asset and its checks, the usage report, and the
maintenance jobs (retention cleanup, compaction) on daily schedules."""
