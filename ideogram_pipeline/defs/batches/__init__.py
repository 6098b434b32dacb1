"""Batches in Dagster: the partitioned batch asset, its checks, its job and the sensor."""
