"""ideogram-pipeline: batch Ideogram image generation with Dagster.

Nothing lost, nothing paid twice, everything findable.
"""

__version__ = "0.1.0"
