"""Request bodies as the simulator reads them, and the checks on their image parts.

Why one module: ``POST /v1/ideogram-v3/generate`` and the v2 routes
(``POST /v2/image/generate/ideogram-3``, ``ideogram-3-character``) both take reference
images as multipart/form-data file parts. Reading them and refusing a bad one in one place
means a client that gets the parts wrong fails the same way on either API version, with a
400 naming the part, as it would at Ideogram.

The form itself goes through the same checks as a JSON body: its strings are turned into
the types the bundled request schema declares (:func:`ideogram_pipeline.ideogram.spec.
coerce_multipart_fields`), each file part standing in as a placeholder that carries the
SHA-256 of its bytes, so the billing counter's body hash covers the images byte for byte.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request

from ideogram_pipeline.ideogram import spec
from ideogram_pipeline.ideogram.capabilities import Route
from ideogram_pipeline.ideogram.references import (
    WIRE_NAMES,
    image_dimensions,
    limit_errors,
    sniff_image,
)

__all__ = ["RequestBody", "image_part_errors", "parse_multipart", "read_body", "reference_errors"]

#: The file parts Ideogram takes: the reference image fields.
_IMAGE_FIELDS = frozenset(WIRE_NAMES.values())


@dataclass(frozen=True)
class RequestBody:
    """One request body: its fields (typed as the schema declares, file parts as
    placeholders) and the bytes of each file part by field name."""

    fields: dict[str, Any]
    files: dict[str, list[bytes]] = field(default_factory=dict)


def parse_multipart(
    body: bytes, content_type: str
) -> tuple[dict[str, str | list[str]], dict[str, list[bytes]]]:
    """Form fields and file parts of a multipart body (stdlib parser, so no
    python-multipart dependency).

    A file part becomes a short placeholder string in the form (``<file NAME sha256 HEX>``)
    for the schema check, and its bytes go to the second mapping by field name.
    """
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise ValueError("malformed multipart/form-data body")
    form: dict[str, str | list[str]] = {}
    files: dict[str, list[bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            raise ValueError("multipart part without a name")
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        filename = part.get_filename()
        if filename:
            files.setdefault(name, []).append(data)
            value = f"<file {filename} sha256 {hashlib.sha256(data).hexdigest()}>"
        else:
            value = data.decode("utf-8")
        previous = form.get(name)
        if previous is None:
            form[name] = value
        else:
            form[name] = [*(previous if isinstance(previous, list) else [previous]), value]
    return form, files


def _coerce(
    form: Mapping[str, str | list[str]], route: Route | None, schema: str
) -> dict[str, Any]:
    """Form strings typed by the request schema ``schema`` (by default 3.0 generate's, whose
    field names the 3.0 v2 paths share), then ``route``'s own booleans, such as v2's
    ``async`` form field."""
    fields = spec.coerce_multipart_fields(form, schema)
    for rule in route.rules if route is not None else ():
        value = fields.get(rule.wire_name)
        if rule.kind == "boolean" and isinstance(value, str):
            text = value.strip().lower()
            if text in ("true", "false"):
                fields[rule.wire_name] = text == "true"
    return fields


async def read_body(
    request: Request, route: Route | None = None, schema: str = "GenerateImageRequestV3"
) -> RequestBody:
    """The body of ``request`` as JSON, multipart/form-data or urlencoded; form fields are
    typed by the request schema ``schema`` (and by ``route``'s booleans). A ``ValueError``
    (or ``UnicodeDecodeError``) says why it could not be read."""
    content_type = request.headers.get("content-type", "")
    raw = await request.body()
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/json":
        return RequestBody(json.loads(raw))
    if media == "multipart/form-data":
        form, files = parse_multipart(raw, content_type)
        return RequestBody(_coerce(form, route, schema), files)
    if media == "application/x-www-form-urlencoded":
        parsed = parse_qs(raw.decode("utf-8"), keep_blank_values=True)
        form = {k: v[0] if len(v) == 1 else v for k, v in parsed.items()}
        return RequestBody(_coerce(form, route, schema))
    raise ValueError(
        f"unsupported Content-Type {media or '(none)'!r}: send multipart/form-data or "
        "application/json"
    )


def reference_errors(body: RequestBody) -> list[str]:
    """Why the body's image parts are refused, each error naming its part.

    Reference images must be file parts (a declared field with text instead, as in JSON,
    is refused), only the reference fields take files, and the images must be PNG, JPEG
    or WebP within the spec's size and count limits (:func:`~ideogram_pipeline.ideogram.
    references.limit_errors`, the rules the batch reader applies before sending).
    """
    fields, files = body.fields, body.files
    errors = [
        f"{name}: a file part, but only {', '.join(sorted(_IMAGE_FIELDS))} take files"
        for name in files
        if name not in _IMAGE_FIELDS
    ]
    errors += [
        f"{wire}: must be image file parts, not text"
        for wire in WIRE_NAMES.values()
        if fields.get(wire) is not None and len(files.get(wire, [])) != len(_as_list(fields[wire]))
    ]
    by_role = {role: files.get(wire, []) for role, wire in WIRE_NAMES.items()}
    errors += [
        f"{WIRE_NAMES[role]}: {reason}"
        for role, reason in limit_errors(by_role)  # type: ignore[arg-type]
    ]
    return errors


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def image_part_errors(body: RequestBody, part: spec.ImagePart) -> list[str]:
    """Why an operation's source image part is refused (issue 19), each error naming it.

    The part must be there, as one file (a text value, as JSON would send, is refused), a
    PNG, JPEG or WebP that really opens, within the size limit the spec states for that
    endpoint (10 MB; 25 MB for remove-background). Any other file parts are reference
    images, checked by :func:`reference_errors`.
    """
    name, files = part.name, body.files.get(part.name, [])
    errors: list[str] = []
    if not files:
        sent_text = body.fields.get(name) is not None
        errors.append(
            f"{name}: must be an image file part, not text"
            if sent_text
            else f"{name}: required (the source image, as a file part)"
        )
    elif len(files) > 1:
        errors.append(f"{name}: one image file part, got {len(files)}")
    else:
        data = files[0]
        if len(data) > part.max_bytes:
            errors.append(f"{name}: {len(data):,} bytes; the limit is {part.max_bytes:,}")
        elif sniff_image(data) is None:
            errors.append(f"{name}: not a PNG, JPEG or WebP image")
        elif image_dimensions(data) is None:
            errors.append(f"{name}: not a readable image")
    others = {field: data for field, data in body.files.items() if field != name}
    return errors + reference_errors(RequestBody(body.fields, others))
