"""The Dagster layer: thin wiring of resources, partitions, assets and sensors around plain
Python (``pipeline.py``), which stays testable without Dagster."""
