"""The simulator's HTTP side: request parsing, the generate and download handlers, the app.

Public behaviour (endpoints, triggers, billing) is described in
:mod:`ideogram_pipeline.simulator.server`; this module is its implementation.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import math
import random
import time
from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ideogram_pipeline.ideogram import spec
from ideogram_pipeline.ideogram.capabilities import (
    LEGACY_MODELS,
    V2_CHARACTER,
    V3_MODEL,
    V3_TRANSPARENT_SCHEMA,
    capability,
)
from ideogram_pipeline.ideogram.prices import price_per_image
from ideogram_pipeline.ideogram.references import WIRE_NAMES
from ideogram_pipeline.simulator.answers import (
    ASPECT_RESOLUTIONS,
    AUTO_STYLES,
    DEFAULT_RESOLUTION,
    body_hash,
    hash_text,
    magic_prompt,
    nominal_resolution,
)
from ideogram_pipeline.simulator.hooks import HostedImage, ImageHost
from ideogram_pipeline.simulator.images import (
    ImageKey,
    is_transparent_model,
    pixel_size,
    render_png,
    render_transparent_png,
)
from ideogram_pipeline.simulator.jobs import Job
from ideogram_pipeline.simulator.multipart import read_body, reference_errors
from ideogram_pipeline.simulator.operations import SimulatedOps
from ideogram_pipeline.simulator.state import (
    SimulatorConfig,
    SimulatorStats,
    Triggers,
)
from ideogram_pipeline.simulator.traffic import RouteCounter
from ideogram_pipeline.simulator.v2 import SimulatedV2

__all__ = ["ASPECT_RESOLUTIONS", "DEFAULT_RESOLUTION", "build_app", "magic_prompt"]

logger = logging.getLogger(__name__)

_STATUS_ERRORS = {
    402: "Insufficient credits to complete the request.",
    422: "Prompt provided failed safety check due to the inclusion of prohibited content.",
    429: "Too many requests in flight for this organization.",
    500: "Internal server error.",
    502: "Bad gateway.",
    503: "Service temporarily unavailable.",
    504: "Gateway timeout.",
}
_MAX_REMEMBERED_IMAGES = 100_000
_ID_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


class _SimulatedApi:
    """Request handling state: one instance per running app, used from its event loop only
    (apart from ``stats``, which is locked)."""

    def __init__(
        self, config: SimulatorConfig, stats: SimulatorStats, image_host: ImageHost | None
    ) -> None:
        self.config = config
        self.stats = stats
        self.image_host = image_host
        self.rng = random.Random(config.random_seed)
        secret = config.url_secret or f"ideogram-simulator-{config.random_seed}"
        self.secret = secret.encode("utf-8")
        self.images: dict[str, tuple[ImageKey, int, bool]] = {}  # id -> key, expiry, corrupt
        self.attempts: dict[str, int] = {}
        self.unsafe_counter = 0

    # -- generate ---------------------------------------------------------------------------

    async def generate_v3(self, request: Request) -> Response:
        if (denied := self._check_key(request)) is not None:
            return denied
        try:
            read = await read_body(request)
        except (ValueError, UnicodeDecodeError) as exc:
            return self._invalid(f"body: could not parse the request: {exc}")
        body = read.fields
        # The schema checks types and structure; the capability table adds what the spec
        # says only in prose (the prompt limit, the reference image limits), so the
        # client's rules are the ones enforced.
        errors = (
            spec.validate_v3_request(body)
            or capability(V3_MODEL).route.wire_errors(body, V3_MODEL)
            or reference_errors(read)
        )
        if errors:
            return self._invalid("; ".join(errors))
        # A character reference is another product, billed at its own price (prices.py).
        product = V2_CHARACTER if read.files.get(WIRE_NAMES["character"]) else "V_3"
        return await self._generate(request, body, product, body, legacy=False)

    async def generate_v3_transparent(self, request: Request) -> Response:
        """``POST /v1/ideogram-v3/generate-transparent``: RGBA PNGs, billed as the
        ``ideogram-3-transparent`` product."""
        if (denied := self._check_key(request)) is not None:
            return denied
        try:
            body = (await read_body(request)).fields
        except (ValueError, UnicodeDecodeError) as exc:
            return self._invalid(f"body: could not parse the request: {exc}")
        route = capability(V3_MODEL).transparent_route
        assert route is not None
        errors = spec.validate_v3_request(body, schema=V3_TRANSPARENT_SCHEMA) or (
            route.wire_errors(body, V3_MODEL)
        )
        if errors:
            return self._invalid("; ".join(errors))
        return await self._generate(request, body, "ideogram-3-transparent", body, legacy=False)

    async def generate_legacy(self, request: Request) -> Response:
        if (denied := self._check_key(request)) is not None:
            return denied
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError) as exc:
            return self._invalid(f"body: not valid JSON: {exc}")
        errors = spec.validate_legacy_request(body)
        if errors:
            return self._invalid("; ".join(errors))
        inner = body["image_request"]
        model = inner.get("model", "V_2")
        if model not in LEGACY_MODELS:
            return self._invalid(
                f"image_request.model: {model} is not served by POST /generate; "
                "use POST /v1/ideogram-v3/generate"
            )
        # Per-model limits the spec states in prose (V_1 takes no style_type, ...).
        errors = capability(model).route.wire_errors(inner, model)
        if errors:
            return self._invalid("; ".join(f"image_request.{error}" for error in errors))
        return await self._generate(request, inner, model, body, legacy=True)

    def _check_key(self, request: Request) -> Response | None:
        sent = request.headers.get("api-key", "")
        if sent and hmac.compare_digest(sent.encode(), self.config.api_key.encode()):
            return None
        self.stats.record_response(401)
        return _error(401, "Missing or invalid Api-Key header." if sent else "Missing Api-Key.")

    def _invalid(self, message: str) -> Response:
        logger.debug("simulator: 400 %s", message)
        self.stats.record_response(400, message)
        return _error(400, message)

    async def _generate(
        self, request: Request, fields: dict[str, Any], model: str, body: Any, legacy: bool
    ) -> Response:
        return await self.serve(self.generation_job(request, fields, model, body, legacy))

    def generation_job(
        self, request: Request, fields: dict[str, Any], model: str, body: Any, legacy: bool
    ) -> Job:
        """A generate request as a :class:`Job`: served now (v1, sync v2) or submitted
        (async v2), with the same images, faults and billing either way."""
        num_images = int(fields.get("num_images", 1))
        path = request.url.path
        return Job(
            trigger_text=fields["prompt"],
            attempt_key=fields["prompt"],
            slots=num_images,
            build=lambda triggers: self._success(
                request, fields, model, num_images, triggers, legacy
            ),
            bill=lambda payload: self._bill(fields, model, payload, body, path),
        )

    async def serve(self, job: Job) -> Response:
        """Answer ``job`` synchronously with the generation's fault switches: scripted and
        random failures, the in-flight limit held for the whole latency, then a billed 200."""
        triggers = job.triggers
        attempt = self.attempts[job.attempt_key] = self.attempts.get(job.attempt_key, 0) + 1
        # Draw every random choice up front, in a fixed order, so triggers do not shift them.
        server_error = self.rng.random() < self.config.server_error_rate
        server_status = self.rng.choice((500, 503))
        safety_reject = self.rng.random() < self.config.safety_reject_rate
        scripted = triggers.failure_for_attempt(attempt)

        if scripted == 429 or not self.stats.try_acquire(job.slots, self.config.max_inflight):
            return self.rate_limited()
        try:
            delay = self.config.latency_s + (self.config.slow_latency_s if triggers.slow else 0)
            if delay:
                await asyncio.sleep(delay)
            status = (
                scripted
                or (422 if triggers.safety_reject or safety_reject else None)
                or (server_status if server_error else None)
            )
            if status is not None:
                self.stats.record_response(status)
                return _error(status, _STATUS_ERRORS[status])
            payload = job.build(triggers)
        finally:
            self.stats.release(job.slots)
        self.stats.record_response(200)
        job.bill(payload)
        return JSONResponse(payload)

    def rate_limited(self) -> Response:
        """Ideogram's 429 for the in-flight limit (not billed)."""
        self.stats.record_response(429)
        return _error(
            429,
            _STATUS_ERRORS[429],
            reject_reason="inflight_limit",
            max_inflight_requests=self.config.max_inflight,
            task_completion_speed="fast",
        )

    def _success(
        self,
        request: Request,
        fields: dict[str, Any],
        model: str,
        num_images: int,
        triggers: Triggers,
        legacy: bool,
    ) -> dict[str, Any]:
        prompt: str = fields["prompt"]
        seed = fields.get("seed")
        if seed is None:
            seed = self.rng.randrange(0, spec.SEED_MAX + 1)
        resolution = nominal_resolution(fields)
        style_type = fields.get("style_type") or "GENERAL"
        if style_type == "AUTO":
            style_type = AUTO_STYLES[hash_text(prompt) % len(AUTO_STYLES)]
        shown_prompt = magic_prompt(
            prompt, fields.get("magic_prompt_option" if legacy else "magic_prompt")
        )
        expires = self.expiry(triggers)
        data = []
        for index in range(num_images):
            draw = self.rng.random()  # drawn even when a trigger decides, to keep the sequence
            unsafe = triggers.unsafe or draw < self.config.unsafe_rate
            image_id = self._new_id()
            item: dict[str, Any] = {
                "prompt": shown_prompt,
                "resolution": resolution,
                "is_image_safe": not unsafe,
                "seed": seed,
                "style_type": style_type,
            }
            if unsafe:
                self.withhold(item)
            else:
                key = ImageKey(
                    model=model,
                    prompt=shown_prompt,
                    seed=seed,
                    resolution=resolution,
                    style_type=style_type,
                    negative_prompt=fields.get("negative_prompt"),
                    index=index,
                )
                item["url"] = self.host(request, image_id, key, expires, triggers.corrupt)
            data.append(item)
        return {"created": datetime.now(UTC).isoformat(timespec="seconds"), "data": data}

    def expiry(self, triggers: Triggers) -> int:
        """When the URLs of one answer expire (already past for ``[sim:expired]``)."""
        # Whole seconds, rounded up, so a URL is never valid for less than url_ttl_s.
        now = time.time()
        if len(self.images) > _MAX_REMEMBERED_IMAGES:
            self._forget_expired(now)
        if triggers.expired:
            return math.floor(now) - 1
        return math.ceil(now + self.config.url_ttl_s)

    def withhold(self, item: dict[str, Any]) -> None:
        """An unsafe image's url: null, "" or absent, in rotation (clients must accept all)."""
        form = self.unsafe_counter % 3
        self.unsafe_counter += 1
        if form < 2:
            item["url"] = None if form == 0 else ""

    def host(
        self, request: Request, image_id: str, key: ImageKey, expires: int, corrupt: bool
    ) -> str:
        """Remember ``key`` under ``image_id`` and return its signed, expiring URL (as the
        image host, if any, rewrites it)."""
        self.images[image_id] = (key, expires, corrupt)
        url = self._signed_url(str(request.base_url).rstrip("/"), image_id, expires)
        if self.image_host is not None:
            url = self.image_host.image_url(url, HostedImage(image_id, key.prompt))
        return url

    def new_id(self) -> str:
        """A fresh 22-character image or generation id from the simulator's generator."""
        return self._new_id()

    def _forget_expired(self, now: float) -> None:
        """Bound memory in a long-running simulator: expired links can never be served."""
        for image_id in [i for i, (_, exp, _) in self.images.items() if exp < now]:
            del self.images[image_id]

    def _bill(
        self, fields: dict[str, Any], model: str, payload: dict[str, Any], body: Any, route: str
    ) -> None:
        images = payload["data"]
        price = price_per_image(model, fields.get("rendering_speed"))
        self.stats.record_billing(
            prompt=fields["prompt"],
            seed=images[0]["seed"],
            images=len(images),
            unsafe=sum(1 for item in images if not item["is_image_safe"]),
            body_hash=body_hash(body),
            usd=price * len(images),
            route=route,
        )

    def _new_id(self) -> str:
        value = self.rng.getrandbits(128)
        chars = []
        for _ in range(22):
            value, index = divmod(value, len(_ID_ALPHABET))
            chars.append(_ID_ALPHABET[index])
        return "".join(chars)

    # -- download ---------------------------------------------------------------------------

    def _signature(self, image_id: str, expires: int) -> str:
        message = f"{image_id}.{expires}".encode()
        return hmac.new(self.secret, message, hashlib.sha256).hexdigest()

    def _signed_url(self, base_url: str, image_id: str, expires: int) -> str:
        sig = self._signature(image_id, expires)
        return f"{base_url}/api/images/ephemeral/{image_id}.png?exp={expires}&sig={sig}"

    async def download(self, request: Request) -> Response:
        if self.config.download_latency_s:
            await asyncio.sleep(self.config.download_latency_s)
        image_id = request.path_params["image_id"]
        exp, sig = request.query_params.get("exp", ""), request.query_params.get("sig", "")
        valid_exp = exp.isascii() and exp.isdigit()
        expected = self._signature(image_id, int(exp)) if valid_exp else ""
        if not valid_exp or not hmac.compare_digest(sig.encode(), expected.encode()):
            self.stats.record_download(403)
            return _error(403, "Invalid signature.")
        if int(exp) < time.time():
            self.stats.record_download(403)
            return _error(403, "URL expired.")
        entry = self.images.get(image_id)
        if entry is None:
            self.stats.record_download(404)
            return _error(404, "Image not found.")
        key, expires, corrupt = entry
        if self.image_host is not None:
            answer = self.image_host.download(request, HostedImage(image_id, key.prompt))
            if answer is not None:
                self.stats.record_download(answer.status_code)
                return answer
        width, height = (
            pixel_size(key.pixels)
            if key.pixels
            else pixel_size(key.resolution, self.config.image_scale)
        )
        render = render_transparent_png if is_transparent_model(key.model) else render_png
        data = render(key, width, height)
        if corrupt:
            self.images[image_id] = (key, expires, False)
            data = data[: len(data) // 2]
        self.stats.record_download(200, corrupt=corrupt)
        return Response(data, media_type="image/png", headers={"Cache-Control": "private"})

    # -- introspection ----------------------------------------------------------------------

    async def stats_endpoint(self, request: Request) -> Response:
        return JSONResponse(self.stats.snapshot())

    async def reset_endpoint(self, request: Request) -> Response:
        self.stats.reset()
        return JSONResponse({"reset": True})


def build_app(
    config: SimulatorConfig | None = None,
    stats: SimulatorStats | None = None,
    image_host: ImageHost | None = None,
) -> Starlette:
    """The simulator as an ASGI app (``app.state.stats`` holds its counters).

    ``image_host`` may rewrite image URLs and answer downloads (see
    :mod:`ideogram_pipeline.simulator.hooks`); without one the host behaves.
    """
    api = _SimulatedApi(config or SimulatorConfig(), stats or SimulatorStats(), image_host)
    v2 = SimulatedV2(api, poll_limit=api.config.poll_limit_per_10s)
    app = Starlette(
        routes=[
            Route("/v2/image/generate/{model}", v2.generate, methods=["POST"]),
            Route("/v2/generations/{generation_id}", v2.poll, methods=["GET"]),
            Route("/v1/ideogram-v3/generate", api.generate_v3, methods=["POST"]),
            Route(
                "/v1/ideogram-v3/generate-transparent",
                api.generate_v3_transparent,
                methods=["POST"],
            ),
            Route("/generate", api.generate_legacy, methods=["POST"]),
            *SimulatedOps(api, v2).routes(),
            Route("/api/images/ephemeral/{image_id}.png", api.download, methods=["GET"]),
            Route("/sim/stats", api.stats_endpoint, methods=["GET"]),
            Route("/sim/reset", api.reset_endpoint, methods=["POST"]),
        ],
        middleware=[
            Middleware(RouteCounter, stats=api.stats),
            *(
                [Middleware(GZipMiddleware, minimum_size=0, exclude_content_types=("image/png",))]
                if api.config.gzip_json
                else []
            ),
        ],
    )
    app.state.stats = api.stats
    app.state.config = api.config
    return app
