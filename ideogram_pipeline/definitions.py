"""The Dagster code location (``workspace.yaml`` and ``dagster dev`` load this).

Everything is in ``defs/``, found by ``dg.load_from_defs_folder``: it reads the project
marker ``dg.toml`` beside this file (``root_module``), imports every module under
``defs/`` and collects what they define. The marker sits inside the package, not in
``pyproject.toml``, so an installed copy (the Docker image's ``pip install .``) finds it
as well as a checkout does.
"""

from pathlib import Path

import dagster as dg

defs = dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
