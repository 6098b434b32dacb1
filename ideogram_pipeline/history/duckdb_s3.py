"""DuckDB over S3: the ``httpfs`` extension from PyPI and a secret from the AWS settings.

Machines here cannot download DuckDB extensions at run time, so ``httpfs`` comes from the
``duckdb-extension-httpfs`` wheel (whose version must equal duckdb's) and is loaded straight
from the file inside that package: nothing is downloaded and nothing is written to
``~/.duckdb``. Automatic extension installs are switched off on the connection, so a
missing extension is a clear error instead of a hanging download.

The same settings also produce the SQL a user pastes into their own DuckDB client
(:func:`duckdb_init_sql`), with credentials replaced by placeholders unless asked for.
"""

from __future__ import annotations

import importlib.util
import urllib.parse
from pathlib import Path

import duckdb

from ideogram_pipeline.safe_output import sql_literal
from ideogram_pipeline.settings import Settings
from ideogram_pipeline.storage.base import StorageError

__all__ = [
    "SECRET_NAME",
    "configure_duckdb_s3",
    "duckdb_init_sql",
    "extension_path",
    "load_extension",
    "load_httpfs",
    "s3_secret_sql",
    "views_sql",
]

SECRET_NAME = "ideogram_s3"
KEY_ID_PLACEHOLDER = "<AWS_ACCESS_KEY_ID>"
SECRET_PLACEHOLDER = "<AWS_SECRET_ACCESS_KEY>"


def extension_path(name: str) -> Path:
    """The ``<name>.duckdb_extension`` file shipped by the ``duckdb-extension-<name>`` wheel."""
    package = f"duckdb_extension_{name}"
    wheel = f"duckdb-extension-{name}=={duckdb.__version__}"
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise StorageError(f"DuckDB needs its {name} extension here: pip install {wheel}")
    base = Path(next(iter(spec.submodule_search_locations))) / "extensions"
    path = base / f"v{duckdb.__version__}" / f"{name}.duckdb_extension"
    if not path.is_file():
        shipped = sorted(p.name for p in base.glob("v*")) if base.is_dir() else []
        raise StorageError(
            f"duckdb-extension-{name} ships {', '.join(shipped) or 'no extension'}, but duckdb "
            f"is {duckdb.__version__}: pip install {wheel}"
        )
    return path


def load_extension(con: duckdb.DuckDBPyConnection, name: str) -> None:
    """Load extension ``name`` into ``con`` from its PyPI wheel, never from the network."""
    con.execute("SET autoinstall_known_extensions = false")
    # A literal, not a bound parameter: binding one imports pandas (half a second).
    row = con.execute(
        f"SELECT loaded FROM duckdb_extensions() WHERE extension_name = {sql_literal(name)}"
    ).fetchone()
    if row and row[0]:
        return
    path = extension_path(name)
    try:
        con.execute(f"LOAD {sql_literal(str(path))}")
    except duckdb.Error as exc:
        raise StorageError(f"cannot load the DuckDB {name} extension from {path}: {exc}") from exc


def load_httpfs(con: duckdb.DuckDBPyConnection) -> None:
    """Load ``httpfs`` (DuckDB over S3) from its wheel."""
    load_extension(con, "httpfs")


def _credentials(settings: Settings) -> tuple[str, str, str | None] | None:
    """Key id, secret and session token: from the settings, else boto3's credential chain.

    The chain (profile, SSO, instance role) lets an AWS user with no keys in the environment
    query too; DuckDB's own ``credential_chain`` provider would need the ``aws`` extension,
    which cannot be downloaded here.
    """
    if settings.aws_access_key_id and settings.aws_secret_access_key:
        return settings.aws_access_key_id, settings.aws_secret_access_key, None
    import boto3

    found = boto3.session.Session().get_credentials()
    if found is None:
        return None
    frozen = found.get_frozen_credentials()
    if not frozen.access_key or not frozen.secret_key:
        return None
    return frozen.access_key, frozen.secret_key, frozen.token


def _scope(settings: Settings) -> str | None:
    if not settings.storage.startswith("s3://"):
        return None
    bucket = settings.storage[len("s3://") :].split("/", 1)[0]
    return f"s3://{bucket}"


def s3_secret_sql(
    settings: Settings,
    *,
    key_id: str | None,
    secret: str | None,
    session_token: str | None = None,
) -> str:
    """``CREATE OR REPLACE SECRET`` for the settings' endpoint, scoped to the bucket.

    With no ``key_id`` the secret uses DuckDB's ``credential_chain`` provider instead.
    """
    parts = ["TYPE s3"]
    if key_id is not None and secret is not None:
        parts += [f"KEY_ID {sql_literal(key_id)}", f"SECRET {sql_literal(secret)}"]
        if session_token:
            parts.append(f"SESSION_TOKEN {sql_literal(session_token)}")
    else:
        parts.append("PROVIDER credential_chain")
    parts.append(f"REGION {sql_literal(settings.aws_region or 'us-east-1')}")
    if settings.aws_endpoint_url:
        url = urllib.parse.urlsplit(settings.aws_endpoint_url)
        # DuckDB wants host[:port]; the scheme becomes USE_SSL, and custom endpoints are
        # addressed path-style, as boto3 does for them (see storage/s3.py).
        parts += [
            f"ENDPOINT {sql_literal(url.netloc)}",
            "URL_STYLE 'path'",
            f"USE_SSL {'true' if url.scheme == 'https' else 'false'}",
        ]
    scope = _scope(settings)
    if scope:
        parts.append(f"SCOPE {sql_literal(scope)}")
    return f"CREATE OR REPLACE SECRET {SECRET_NAME} (\n    " + ",\n    ".join(parts) + "\n)"


def configure_duckdb_s3(con: duckdb.DuckDBPyConnection, settings: Settings) -> None:
    """Make ``s3://`` paths of the settings' bucket readable on ``con``, offline."""
    load_httpfs(con)
    credentials = _credentials(settings)
    key_id, secret, token = credentials if credentials else (None, None, None)
    if credentials is None:
        # No keys anywhere: an anonymous secret still reads public buckets.
        key_id, secret = "", ""
    try:
        con.execute(s3_secret_sql(settings, key_id=key_id, secret=secret, session_token=token))
    except duckdb.Error as exc:
        raise StorageError(f"cannot create the DuckDB S3 secret: {exc}") from None


def views_sql(settings: Settings) -> str:
    """The history tables as a plain client names them: one ``ATTACH`` per table (the same
    rows as ``delta_scan`` over its folder, with filters pushed into the scan), and
    ``generations`` as the rows of each batch's latest file (``generations_all``: all)."""
    from ideogram_pipeline.history.layout import GENERATIONS, GENERATIONS_ALL, RECORDS, table_uri
    from ideogram_pipeline.history.views import IN_FILE

    return (
        f"ATTACH {sql_literal(table_uri(settings, RECORDS))} AS {RECORDS} (TYPE delta);\n"
        f"ATTACH {sql_literal(table_uri(settings, GENERATIONS))} AS {GENERATIONS_ALL} "
        "(TYPE delta);\n"
        f"CREATE VIEW {GENERATIONS} AS SELECT * FROM {GENERATIONS_ALL} WHERE {IN_FILE};\n"
    )


def duckdb_init_sql(settings: Settings, *, with_credentials: bool) -> str:
    """SQL for a user's own DuckDB client: the delta extension, for an S3 root httpfs and
    the S3 secret, then the views.

    Without ``with_credentials`` the key id and secret are placeholders to fill in, so the
    output can be shared or pasted into tickets safely.
    """
    lines = [
        f"-- DuckDB setup for ideogram-pipeline storage {settings.storage}",
        "INSTALL delta;",
        "LOAD delta;",
    ]
    if not settings.is_s3:
        return "\n".join(lines) + "\n" + views_sql(settings)
    lines += ["INSTALL httpfs;", "LOAD httpfs;"]
    have_keys = bool(settings.aws_access_key_id and settings.aws_secret_access_key)
    token: str | None = None
    if with_credentials:
        credentials = _credentials(settings)
        key_id, secret, token = credentials if credentials else (None, None, None)
    elif have_keys:
        key_id, secret = KEY_ID_PLACEHOLDER, SECRET_PLACEHOLDER
        lines.insert(1, f"-- Replace {KEY_ID_PLACEHOLDER} and {SECRET_PLACEHOLDER} below.")
    else:
        key_id, secret = None, None
    if key_id is None:
        lines += ["INSTALL aws;", "LOAD aws;"]  # for PROVIDER credential_chain
    lines.append(s3_secret_sql(settings, key_id=key_id, secret=secret, session_token=token) + ";")
    return "\n".join(lines) + "\n" + views_sql(settings)
