"""The simulator's operations on stored images (issue 19): upscale, describe, remix, reframe,
replace and remove backgrounds.

Routes and request schemas (``request_schemas.json``; remove-background's are hand-written
from Ideogram's documentation, see ``x-hand-written``):

==========================================  =============================  ==================
``POST /upscale``                           ``UpscaleImageRequest``         legacy image shape
``POST /describe``                          ``DescribeRequest``             ``descriptions``
``POST /v1/ideogram-v3/remix``              ``RemixImageRequestV3``         3.0 image shape
``POST /v1/ideogram-v3/reframe``            ``ReframeImageRequestV3``       3.0 image shape
``POST /v1/ideogram-v3/replace-background`` ``ReplaceBackgroundRequestV3``  3.0 image shape
``POST /v1/remove-background``              ``RemoveBackgroundRequest``     exactly one image
``POST /v2/image/remove-background/         ``RemoveBackgroundRequestV2``   v2: ``async``,
ideogram-1``                                                                ``?dry_run=true``
==========================================  =============================  ==================

Each is multipart/form-data with one source image part (``image_file`` or ``image``),
refused with a 400 naming it when missing, not a PNG/JPEG/WebP, unreadable or over its
size limit (:func:`~ideogram_pipeline.simulator.multipart.image_part_errors`); the other
fields are typed and validated by the schema, as on the generate routes.

Why the output is what it is: a client is tested on what it can observe, so outputs are
deterministic in the source bytes and the parameters (the seed, when absent, is derived from
them, so a resent request gets the same pictures) and look like the real thing: an upscale
is twice its source in pixels (at most :data:`UPSCALE_MAX_SIDE` on the long side), a
reframe has the requested resolution, a removed background is an RGBA PNG, a description
names the prompt recorded in the source's own text chunks (so search by description can be
tested) or, for a foreign image, its size and colour.

Faults and billing are the generation's (:class:`~ideogram_pipeline.simulator.jobs.Job`):
``[sim:...]`` triggers are read from the request's prompt, the prompt recorded in the source
PNG's text chunks (an image this pipeline stored) and the image part's filename; attempts
are counted per route, source image and prompt. Every output image of a 200 is billed at
the client's price (:func:`unit_price`, from :mod:`ideogram_pipeline.ideogram.operations`);
a describe bills its one input.
"""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ideogram_pipeline.ideogram import operations as priced
from ideogram_pipeline.ideogram import spec
from ideogram_pipeline.ideogram.prices import CHARACTER_PRICE_BY_SPEED_USD, price_per_image
from ideogram_pipeline.ideogram.references import WIRE_NAMES
from ideogram_pipeline.images.png_metadata import read_metadata
from ideogram_pipeline.simulator.answers import (
    ASPECT_RESOLUTIONS,
    AUTO_STYLES,
    body_hash,
    magic_prompt,
)
from ideogram_pipeline.simulator.images import ImageKey
from ideogram_pipeline.simulator.jobs import Job
from ideogram_pipeline.simulator.multipart import RequestBody, image_part_errors, read_body
from ideogram_pipeline.simulator.state import Triggers
from ideogram_pipeline.simulator.v2 import SimulatedV2, completed_shape, price_quote

if TYPE_CHECKING:
    from ideogram_pipeline.simulator.app import _SimulatedApi

__all__ = ["OPERATIONS", "REMOVE_BACKGROUND_V2", "UPSCALE_MAX_SIDE", "Operation", "SimulatedOps"]

#: An upscale doubles its source, but its long side stops growing here.
UPSCALE_MAX_SIDE = 4096
_COLOURS = (
    ("red", (200, 40, 40)),
    ("orange", (230, 140, 30)),
    ("yellow", (220, 210, 60)),
    ("green", (60, 160, 70)),
    ("teal", (40, 150, 150)),
    ("blue", (50, 80, 200)),
    ("purple", (130, 60, 170)),
    ("pink", (220, 120, 170)),
    ("brown", (120, 80, 50)),
    ("grey", (128, 128, 128)),
    ("black", (20, 20, 20)),
    ("white", (235, 235, 235)),
)


@dataclass(frozen=True)
class Operation:
    """One operation route: its name (the batch column's value), path, request schema, and
    the product name its pictures carry (``-transparent``: rendered RGBA)."""

    name: str
    path: str
    schema: str
    product: str


OPERATIONS: tuple[Operation, ...] = (
    Operation("upscale", "/upscale", "UpscaleImageRequest", "upscale"),
    Operation("describe", "/describe", "DescribeRequest", "describe"),
    Operation("remix", "/v1/ideogram-v3/remix", "RemixImageRequestV3", "remix"),
    Operation("reframe", "/v1/ideogram-v3/reframe", "ReframeImageRequestV3", "reframe"),
    Operation(
        "replace_background",
        "/v1/ideogram-v3/replace-background",
        "ReplaceBackgroundRequestV3",
        "replace-background",
    ),
    Operation(
        "remove_background",
        "/v1/remove-background",
        "RemoveBackgroundRequest",
        "remove-background-transparent",
    ),
)
#: Remove-background on the v2 API: ``async`` polling and ``?dry_run=true`` quotes.
REMOVE_BACKGROUND_V2 = Operation(
    "remove_background",
    "/v2/image/remove-background/ideogram-1",
    "RemoveBackgroundRequestV2",
    "remove-background-transparent",
)


@dataclass(frozen=True)
class SourceImage:
    """The image an operation works on, as far as the simulator looks at it."""

    sha256: str
    width: int
    height: int
    #: The prompt recorded in our own PNG text chunks (``png_metadata.py``), if any.
    prompt: str | None
    #: Average colour, for describing a foreign image.
    colour: tuple[int, int, int]

    @classmethod
    def read(cls, data: bytes) -> SourceImage:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as opened:
            width, height = opened.size
            pixel = opened.convert("RGB").resize((1, 1)).getpixel((0, 0))
        colour = pixel if isinstance(pixel, tuple) else (0, 0, 0)
        return cls(
            sha256=hashlib.sha256(data).hexdigest(),
            width=width,
            height=height,
            prompt=_recorded_prompt(data),
            colour=(int(colour[0]), int(colour[1]), int(colour[2])),
        )

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"


def _recorded_prompt(data: bytes) -> str | None:
    """The prompt our JSON text chunk (or the ``parameters`` chunk) records; ``None`` for an
    image without them, or one whose chunks do not parse."""
    if not data.startswith(b"\x89PNG"):
        return None
    try:
        metadata = read_metadata(data)
    except ValueError:
        return None
    record = metadata["record"] or {}
    prompt = record.get("prompt")
    if isinstance(prompt, str) and prompt.strip():
        return prompt.strip()
    parameters = metadata["parameters"]
    if isinstance(parameters, str) and parameters.strip():
        return parameters.strip().splitlines()[0]
    return None


@dataclass(frozen=True)
class _Call:
    """One validated operation request."""

    op: Operation
    body: dict[str, Any]  # every field, file parts as placeholders (hashed for billing)
    params: dict[str, Any]  # the operation's parameters (upscale: its image_request)
    source: SourceImage
    digest: str  # source bytes + operation + parameters
    character: bool  # a remix with a character reference (its own price)

    @property
    def prompt(self) -> str | None:
        prompt = self.params.get("prompt")
        return prompt if isinstance(prompt, str) and prompt else None

    @property
    def seed(self) -> int:
        seed = self.params.get("seed")
        return int(seed) if seed is not None else int(self.digest[:8], 16) % (spec.SEED_MAX + 1)

    @property
    def count(self) -> int:
        return (
            1
            if self.op.name in ("describe", "remove_background")
            else int(self.params.get("num_images", 1))
        )


def _call(op: Operation, read: RequestBody) -> _Call:
    part = spec.image_part(op.schema).name
    source = SourceImage.read(read.files[part][0])
    # How the answer is delivered (v2's async, private) is not what the picture depends on.
    params = {k: v for k, v in read.fields.items() if k not in (part, "async", "private")}
    if op.name == "upscale":
        params = dict(read.fields["image_request"])
    canonical = json.dumps(
        {"operation": op.name, "source": source.sha256, "params": params},
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return _Call(
        op=op,
        body=read.fields,
        params=params,
        source=source,
        digest=hashlib.sha256(canonical.encode("utf-8")).hexdigest(),
        character=bool(read.files.get(WIRE_NAMES["character"])),
    )


class SimulatedOps:
    """Handlers for :data:`OPERATIONS` and :data:`REMOVE_BACKGROUND_V2`, sharing the
    generate handlers' key check, fault switches, image host and billing."""

    def __init__(self, api: _SimulatedApi, v2: SimulatedV2) -> None:
        self.api = api
        self.v2 = v2

    def routes(self) -> list[Route]:
        routes = [
            Route(op.path, partial(self.handle, op=op), methods=["POST"]) for op in OPERATIONS
        ]
        routes.append(Route(REMOVE_BACKGROUND_V2.path, self.remove_background_v2, methods=["POST"]))
        return routes

    async def _read(self, request: Request, op: Operation) -> _Call | Response:
        """The validated call, or the 401/400 answer."""
        api = self.api
        if (denied := api._check_key(request)) is not None:
            return denied
        try:
            read = await read_body(request, schema=op.schema)
        except (ValueError, UnicodeDecodeError) as exc:
            return api._invalid(f"body: could not parse the request: {exc}")
        part = spec.image_part(op.schema)
        errors = image_part_errors(read, part)
        # The part's own message says it is missing; the schema's would repeat it.
        missing = f"'{part.name}' is a required property"
        errors += [e for e in spec.validate_request(op.schema, read.fields) if missing not in e]
        if errors:
            return api._invalid("; ".join(errors))
        return _call(op, read)

    async def handle(self, request: Request, op: Operation) -> Response:
        call = await self._read(request, op)
        if isinstance(call, Response):
            return call
        return await self.api.serve(self._job(request, call))

    async def remove_background_v2(self, request: Request) -> Response:
        """Remove-background on v2: synchronous by default, ``async`` answers a generation
        id polled at ``GET /v2/generations/{id}``, ``?dry_run=true`` a price quote."""
        call = await self._read(request, REMOVE_BACKGROUND_V2)
        if isinstance(call, Response):
            return call
        if request.query_params.get("dry_run", "").lower() == "true":
            self.api.stats.record_response(200)
            price = unit_price("remove_background")
            return JSONResponse(price_quote("ideogram_1_remove_background", price, 1))
        job = self._job(request, call)
        if call.body.get("async"):
            return await self.v2.submit("remove-background/ideogram-1", call.body, job)
        response = await self.api.serve(job)
        if response.status_code != 200:
            return response
        return JSONResponse(completed_shape(uuid.uuid4().hex, json.loads(bytes(response.body))))

    # -- one job per call --------------------------------------------------------------------

    def _job(self, request: Request, call: _Call) -> Job:
        placeholder = str(call.body.get(spec.image_part(call.op.schema).name, ""))
        texts = (call.prompt, call.source.prompt, placeholder)
        return Job(
            trigger_text=" ".join(text for text in texts if text),
            attempt_key=f"{request.url.path} {call.source.sha256} {call.prompt or ''}",
            slots=call.count,
            build=partial(self._build, request, call),
            bill=partial(self._bill, request.url.path, call),
        )

    def _build(self, request: Request, call: _Call, triggers: Triggers) -> dict[str, Any]:
        if call.op.name == "describe":
            version = str(call.params.get("describe_model_version") or "V_3")
            return {"descriptions": [{"text": describe(call.source, version)}]}
        api = self.api
        expires = api.expiry(triggers)
        data = []
        for index in range(call.count):
            draw = api.rng.random()  # drawn even when a trigger decides, as on generate
            unsafe = triggers.unsafe or draw < api.config.unsafe_rate
            image_id = api.new_id()
            item, key = _picture(call, index)
            item["is_image_safe"] = not unsafe
            if unsafe:
                api.withhold(item)
            else:
                item["url"] = api.host(request, image_id, key, expires, triggers.corrupt)
            data.append(item)
        return {"created": datetime.now(UTC).isoformat(timespec="seconds"), "data": data}

    def _bill(self, route: str, call: _Call, payload: dict[str, Any]) -> None:
        images = payload.get("data", [])
        count = len(images) if "data" in payload else 1  # describe: its one input image
        price = unit_price(call.op.name, call.params.get("rendering_speed"), call.character)
        self.api.stats.record_billing(
            prompt=call.prompt or f"{call.op.name} {call.source.sha256}",
            seed=call.seed,
            images=count,
            unsafe=sum(1 for item in images if not item["is_image_safe"]),
            body_hash=body_hash(call.body),
            usd=price * count,
            route=route,
        )


# -- what each operation's pictures are ----------------------------------------------------


def _picture(call: _Call, index: int) -> tuple[dict[str, Any], ImageKey]:
    """The answer item (without url and safety) and the key of its bytes."""
    op, source, params, seed = call.op, call.source, call.params, call.seed
    fallback = source.prompt or f"image {source.sha256[:12]}"
    pixels: str | None = None
    item: dict[str, Any]
    if op.name == "upscale":
        prompt = call.prompt
        shown = magic_prompt(prompt, params.get("magic_prompt_option")) if prompt else fallback
        pixels = upscaled_size(source.width, source.height)
        resolution = pixels
        item = {"prompt": shown, "resolution": source.size, "upscaled_resolution": pixels}
        item.update(seed=seed, style_type="GENERAL")
    elif op.name == "remove_background":
        shown, resolution, pixels = fallback, source.size, source.size
        item = {"resolution": source.size}
    else:
        if op.name == "reframe":
            shown, resolution = fallback, str(params["resolution"])
        else:
            shown = magic_prompt(str(params["prompt"]), params.get("magic_prompt"))
            aspect = params.get("aspect_ratio")
            resolution = str(
                params.get("resolution")
                or (ASPECT_RESOLUTIONS[str(aspect)] if aspect else None)
                or nearest_resolution(source.width, source.height)
            )
        style = params.get("style_type") or "GENERAL"
        if style == "AUTO":
            style = AUTO_STYLES[int(call.digest[8:12], 16) % len(AUTO_STYLES)]
        item = {"prompt": shown, "resolution": resolution, "seed": seed, "style_type": style}
    key = ImageKey(
        model=op.product,
        prompt=shown,
        seed=seed,
        resolution=resolution,
        negative_prompt=params.get("negative_prompt"),
        index=index,
        source=call.digest,
        pixels=pixels,
    )
    return item, key


def unit_price(name: str, rendering_speed: str | None = None, character: bool = False) -> float:
    """USD per output image (describe: per described image), from the client's operation
    table: a flat fee, or a 3.0 image of its speed (a character reference's, if sent)."""
    speed = (rendering_speed or "DEFAULT").upper()
    if character:
        return CHARACTER_PRICE_BY_SPEED_USD.get(speed, CHARACTER_PRICE_BY_SPEED_USD["DEFAULT"])
    flat = priced.operation(name).flat_price_usd
    return flat if flat is not None else price_per_image("V_3", speed)


def upscaled_size(width: int, height: int) -> str:
    """Twice the source, the long side at most :data:`UPSCALE_MAX_SIDE` (never smaller
    than the source)."""
    factor = max(1.0, min(2.0, UPSCALE_MAX_SIDE / max(width, height)))
    return f"{round(width * factor)}x{round(height * factor)}"


def nearest_resolution(width: int, height: int) -> str:
    """The 3.0 resolution whose aspect ratio is closest to ``width`` x ``height``."""
    ratio = width / height

    def distance(resolution: str) -> float:
        w, h = (int(part) for part in resolution.split("x"))
        return abs(w / h - ratio)

    return min(ASPECT_RESOLUTIONS.values(), key=distance)


def describe(source: SourceImage, version: str) -> str:
    """A deterministic description: the recorded prompt when the image carries one, else
    its colour; V_3 adds its size and orientation."""
    colour = min(
        _COLOURS,
        key=lambda named: sum((a - b) ** 2 for a, b in zip(named[1], source.colour, strict=True)),
    )[0]
    subject = source.prompt.rstrip(" .") if source.prompt else f"mostly {colour} shapes"
    text = f"An image of {subject}."
    if version == "V_2":
        return text
    shape = (
        "square"
        if source.width == source.height
        else ("landscape" if source.width > source.height else "portrait")
    )
    return (
        f"{text} A {shape} picture, {source.size} pixels, in {colour} tones "
        f"(simulated description {source.sha256[:12]})."
    )
