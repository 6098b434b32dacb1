"""The simulator's v2 side: ``POST /v2/image/generate/{model}`` and ``GET /v2/generations/{id}``.

Ideogram's current API (see ``reference/ideogram-api-v2-notes.md`` in the design notes) has
no published OpenAPI document here, so requests are checked against the v2 routes of the
capability table (:mod:`ideogram_pipeline.ideogram.capabilities`), the same table the client
builds its bodies from: lowercase enums, ``async`` in the body, ``dry_run`` as a query
parameter. Behaviour follows the notes:

* ``async: true`` answers at once with ``{"generation_id"}``; the generation stays
  ``pending`` for the simulator's latency (holding its images' in-flight slots), then turns
  ``completed`` (billed, ``data[]`` with ``object_type``) or ``failed`` (``failure_reason``,
  not billed). Without ``async`` the call waits and returns the completed shape with
  ``generation_id``, ``generation_kind`` and ``seed``.
* Bodies are JSON or multipart/form-data (``multipart.py``): reference images travel as
  file parts on ``ideogram-3`` (style) and ``ideogram-3-character`` (character and mask),
  checked like v1's; form fields are typed by the request schema, so a multipart
  submission is validated, served, polled and billed exactly like a JSON one.
* ``?dry_run=true`` answers a ``price_quote`` without generating, billing or counting
  towards the in-flight limit.
* ``GET /v2/generations/{id}`` is rate limited like Ideogram's polling (``poll_limit`` per
  10 s; 429 with ``Retry-After`` beyond it).
* Trigger ``[sim:failed]`` makes an async generation end ``failed`` on its first attempt
  (``[sim:failedx3]``: the first three), in addition to the v1 triggers, which apply here too.
"""

from __future__ import annotations

import asyncio
import collections
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ideogram_pipeline.ideogram.capabilities import V2_CHARACTER, V2_ROUTES
from ideogram_pipeline.ideogram.prices import price_per_image
from ideogram_pipeline.ideogram.references import WIRE_NAMES
from ideogram_pipeline.simulator.jobs import Job
from ideogram_pipeline.simulator.multipart import RequestBody, read_body, reference_errors
from ideogram_pipeline.simulator.state import Triggers

if TYPE_CHECKING:
    from ideogram_pipeline.simulator.app import _SimulatedApi

__all__ = ["SimulatedV2", "completed_shape", "price_quote"]

_FAILED = re.compile(r"\[sim:failed(?:x(\d+))?\]")


def _validate(model: str, read: RequestBody) -> list[str]:
    """Errors for a v2 body (JSON or multipart), by the capability table's route for that
    model path, then its image parts as on v1 (``multipart.py``): the character path
    requires its character image."""
    body = read.fields
    if not isinstance(body, dict):
        return ["body: must be a JSON object"]
    errors = V2_ROUTES[model].wire_errors(body, model) or reference_errors(read)
    if not errors and model == V2_CHARACTER and not read.files.get(WIRE_NAMES["character"]):
        errors = [f"{WIRE_NAMES['character']}: required by {model} (an image file part)"]
    return errors


@dataclass
class _Generation:
    id: str
    model: str
    body: dict[str, Any]
    created: str
    status: str = "pending"
    payload: dict[str, Any] = field(default_factory=dict)
    failure_reason: str | None = None


class SimulatedV2:
    """v2 handlers sharing the v1 simulator's key check, limits, images and billing."""

    def __init__(self, api: _SimulatedApi, poll_limit: int = 1000) -> None:
        self.api = api
        self.generations: dict[str, _Generation] = {}
        self.failed_attempts: collections.Counter[str] = collections.Counter()
        self.poll_limit = poll_limit
        self.polls: collections.deque[float] = collections.deque()
        self.tasks: set[asyncio.Task[None]] = set()

    async def generate(self, request: Request) -> Response:
        api = self.api
        if (denied := api._check_key(request)) is not None:
            return denied
        model = request.path_params["model"]
        if model not in V2_ROUTES:
            api.stats.record_response(404)
            return JSONResponse({"error": f"model {model!r} not found"}, status_code=404)
        try:
            read = await read_body(request, V2_ROUTES[model])
        except (ValueError, UnicodeDecodeError) as exc:
            return api._invalid(f"body: could not parse the request: {exc}")
        body = read.fields
        if errors := _validate(model, read):
            return api._invalid("; ".join(errors))
        fields = _as_v1_fields(model, body)
        if request.query_params.get("dry_run", "").lower() == "true":
            api.stats.record_response(200)
            return JSONResponse(_quote(model, fields))
        if not body.get("async"):
            response = await api._generate(request, fields, model, body, legacy=False)
            if response.status_code != 200:
                return response
            payload = json.loads(bytes(response.body))
            return JSONResponse(completed_shape(uuid.uuid4().hex, payload))
        job = api.generation_job(request, fields, model, body, legacy=False)
        return await self.submit(model, body, job)

    async def submit(self, model: str, body: dict[str, Any], job: Job) -> Response:
        """Accept ``job`` asynchronously: ``{"generation_id"}`` at once, or the error a
        synchronous call would have got (scripted, random, 422, the in-flight limit)."""
        api = self.api
        triggers = job.triggers
        attempt = api.attempts[job.attempt_key] = api.attempts.get(job.attempt_key, 0) + 1
        scripted = triggers.failure_for_attempt(attempt)
        # The same random faults as v1, drawn in the same order.
        server_error = api.rng.random() < api.config.server_error_rate
        server_status = api.rng.choice((500, 503))
        safety_reject = api.rng.random() < api.config.safety_reject_rate
        if scripted is None and server_error:
            scripted = server_status
        if scripted == 429 or not api.stats.try_acquire(job.slots, api.config.max_inflight):
            return api.rate_limited()
        if scripted is not None or triggers.safety_reject or safety_reject:
            api.stats.release(job.slots)
            status = scripted or 422
            api.stats.record_response(status)
            return JSONResponse({"error": f"simulated HTTP {status}"}, status_code=status)
        generation = _Generation(
            id=uuid.uuid4().hex,
            model=model,
            body=body,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        self.generations[generation.id] = generation
        api.stats.record_response(200)
        task = asyncio.create_task(self._complete(generation, job, triggers))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        await asyncio.sleep(api.config.submit_latency_s)  # accepted: the answer is on its way
        return JSONResponse({"generation_id": generation.id})

    async def _complete(self, generation: _Generation, job: Job, triggers: Triggers) -> None:
        api = self.api
        try:
            delay = api.config.latency_s + (api.config.slow_latency_s if triggers.slow else 0)
            await asyncio.sleep(delay)
            match = _FAILED.search(job.trigger_text)
            if match:
                self.failed_attempts[job.attempt_key] += 1
                if self.failed_attempts[job.attempt_key] <= int(match.group(1) or 1):
                    generation.status = "failed"
                    generation.failure_reason = "simulated generation failure"
                    return
            payload = job.build(triggers)
            job.bill(payload)
            generation.payload = completed_shape(generation.id, payload)
            generation.status = "completed"
        finally:
            api.stats.release(job.slots)

    async def poll(self, request: Request) -> Response:
        api = self.api
        if (denied := api._check_key(request)) is not None:
            return denied
        now = time.monotonic()
        while self.polls and now - self.polls[0] > 10:
            self.polls.popleft()
        if len(self.polls) >= self.poll_limit:
            api.stats.record_response(429)
            return JSONResponse(
                {"error": "Polling rate limit exceeded."},
                status_code=429,
                headers={"Retry-After": "1"},
            )
        self.polls.append(now)
        generation = self.generations.get(request.path_params["generation_id"])
        if generation is None:
            return JSONResponse({"error": "generation not found"}, status_code=404)
        if generation.status == "completed":
            return JSONResponse(
                {**generation.payload, "status": "completed", "created": generation.created}
            )
        answer: dict[str, Any] = {
            "generation_id": generation.id,
            "status": generation.status,
            "created": generation.created,
        }
        if generation.failure_reason:
            answer["failure_reason"] = generation.failure_reason
        return JSONResponse(answer)


def _as_v1_fields(model: str, body: dict[str, Any]) -> dict[str, Any]:
    """The v2 body in the upper-case v1 spellings the shared image code understands."""
    fields = {k: v for k, v in body.items() if k != "async"}
    for name in ("rendering_speed", "magic_prompt", "style_type"):
        if isinstance(fields.get(name), str):
            fields[name] = fields[name].upper()
    if model == "ideogram-4-5":
        quality = fields.pop("quality", None)
        fields.pop("size", None)
        fields.pop("enable_copyright_detection", None)
        if quality:
            fields["rendering_speed"] = str(quality).upper()  # billed by its tier
    return fields


def completed_shape(generation_id: str, payload: dict[str, Any]) -> dict[str, Any]:
    """A v1-style answer (``created``, ``data``) as v2 reports a completed generation."""
    data = [{**item, "object_type": "image"} for item in payload["data"]]
    return {
        "generation_id": generation_id,
        "generation_kind": "sampling",
        "response_type": "url",
        "seed": data[0].get("seed") if data else None,
        "data": data,
    }


def _quote(model: str, fields: dict[str, Any]) -> dict[str, Any]:
    quantity = int(fields.get("num_images", 1))
    price = price_per_image(model, fields.get("rendering_speed"))
    return price_quote(f"{model.replace('-', '_')}_generate", price, quantity)


def price_quote(billing_identifier: str, price_usd: float, quantity: int) -> dict[str, Any]:
    """A ``dry_run`` answer (v2 notes §3): exact, and never billed."""
    micros = round(price_usd * 1_000_000) * quantity
    return {
        "object": "price_quote",
        "billing_identifier": billing_identifier,
        "quantity": quantity,
        "usd_micros": micros,
        "credit_millis": micros // 100,
        "qualifier": "exact",
        "upper_bound_usd_micros": micros,
    }
