"""A loopback stand-in for api.ideogram.ai, used when ``IDEOGRAM_API_KEY`` is unset and by tests.

It speaks the real shapes: ``POST /v1/ideogram-v3/generate`` (multipart/form-data, JSON or
urlencoded), legacy ``POST /generate`` (JSON ``{"image_request": {...}}``), the ``Api-Key``
header, signed expiring image URLs under ``/api/images/ephemeral/<id>.png``, 400/401/422/429/5xx
answers with Ideogram's bodies, and a per-organisation in-flight limit counted in images.
Request bodies are validated by :mod:`ideogram_pipeline.ideogram.spec` (the derived OpenAPI
schema), so a client that sends something the spec rejects fails here, not in production.

It also serves Ideogram's current v2 API (``POST /v2/image/generate/{model}`` with
``async``, ``GET /v2/generations/{id}``, ``?dry_run=true`` quotes); see
:mod:`ideogram_pipeline.simulator.v2` and its ``[sim:failed]`` trigger.

Operations on stored images (issue 19; :mod:`ideogram_pipeline.simulator.operations`):
``POST /upscale`` (``image_file`` + JSON part ``image_request``), ``POST /describe``
(``image_file``), ``POST /v1/ideogram-v3/remix``, ``/reframe``, ``/replace-background``
(``image``), ``POST /v1/remove-background`` and ``POST /v2/image/remove-background/ideogram-1``
(``image``; ``async`` polled at ``GET /v2/generations/{id}``, ``?dry_run=true`` quotes
$0.01). All multipart; the image part is refused with a 400 naming it when missing, not
a PNG/JPEG/WebP, unreadable or over its limit (10 MB; 25 MB for remove-background), other
fields by the schema. Outputs are deterministic in the source bytes and the parameters (a
missing seed is derived from them): an upscale is twice its source in pixels (long side at
most 4096), a reframe has the requested resolution, remove-background returns exactly one
RGBA PNG, a description names the prompt our PNG text chunks record in the source. The
triggers below apply too, read from the request's prompt, the source's recorded prompt and
the image part's filename; attempts count per route, source image and prompt. Every output
image of a 200 is billed at the client's price (``ideogram/operations.py``; describe bills
its one input), and ``stats.billed_by_route`` counts billed images per path.

Behaviour worth knowing:

* Legacy ``/generate`` serves V_1, V_1_TURBO, V_2, V_2_TURBO, V_2A, V_2A_TURBO (V_2 when
  ``model`` is absent) and answers 400 for V_3/AUTO: those belong on the v3 endpoint, and a
  misrouted request is a client bug worth catching.
* Unknown fields are a 400 (the spec lists every field; a typo should not pass silently).
* Magic Prompt: ON always expands; AUTO (also when the field is absent) expands prompts of
  fewer than 12 words; OFF echoes. The expansion starts with the prompt as sent.
* Image bytes are a deterministic PNG of (model, reported prompt, seed, resolution,
  style_type, negative_prompt, position in the response): a repeated request gets the same
  pictures, and the images of one request (which share its seed) differ from each other.
  Each shows its prompt's text and is marked SIMULATED; about 1 MB at 1024x1024,
  rendered in a few milliseconds (see :mod:`ideogram_pipeline.simulator.images`).
* ``resolution`` in the response is the nominal one (from ``resolution`` or the aspect ratio,
  default 1024x1024); the PNG's pixels are that times ``image_scale``.
* A request for more images than ``max_inflight`` can never fit and always gets 429.
* Billing follows Ideogram: every image of a 200 is billed, unsafe ones included; 400, 401,
  402, 422, 429 and 5xx are not. ``stats`` counts billed images and USD, images per
  (prompt, seed) and 200s per request-body hash, so a test can prove nothing was paid twice.
* The in-flight limit holds each accepted request's images for its whole latency; 429s are
  answered at once. ``stats.max_images_inflight_seen`` never exceeds ``max_inflight``.
* ``stats.requests_by_route`` counts every POST by path and media type
  (``"POST /v2/image/generate/ideogram-3 multipart/form-data"``), so a test can see which
  endpoint, and which encoding, a client chose.
* ``GET /sim/stats`` returns the counters as JSON and ``POST /sim/reset`` zeroes them, for a
  simulator started by the CLI in another process.

Deterministic triggers (put them anywhere in the prompt; they survive Magic Prompt):

===================  =====================================================================
``[sim:unsafe]``     every image is unsafe: ``is_image_safe`` false, url null / "" / absent
                     (rotating), still billed
``[sim:422]``        422 safety rejection, every attempt, not billed
``[sim:500]``        500 on the first attempt of this exact prompt, success afterwards;
                     ``[sim:500x3]`` fails the first 3. Also 402, 429 (``inflight_limit``
                     body), 502, 503 and 504 the same way.
``[sim:expired]``    the returned URLs are already expired (download answers 403)
``[sim:slow]``       ``slow_latency_s`` extra latency (default 2 s)
``[sim:corrupt]``    the first download of each image returns a truncated PNG (with a
                     matching Content-Length, so only checking the PNG catches it); the
                     second download is complete
===================  =====================================================================

The image host itself can be made to misbehave for tests: ``Simulator(image_host=...)``
takes an :class:`~ideogram_pipeline.simulator.hooks.ImageHost` that may rewrite each image's
URL and answer its download instead (``tests/support/hostile_host.py`` uses it for the
download URL policy: foreign and metadata addresses, redirects, endless bodies, HTML).

Attempts are counted per exact prompt for the simulator's lifetime (``stats.reset()`` keeps
them), so give each scripted scenario a prompt of its own.

Start it in-process with ``with running_simulator(SimulatorConfig(...)) as sim:`` (then use
``sim.base_url``, ``sim.api_key``, ``sim.stats``), or block with :func:`serve_forever`.
Request headers are never logged: they carry API keys.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from starlette.applications import Starlette

from ideogram_pipeline.simulator.app import build_app
from ideogram_pipeline.simulator.hooks import HostedImage, ImageHost
from ideogram_pipeline.simulator.state import (
    DEFAULT_SIMULATOR_API_KEY,
    SimulatorConfig,
    SimulatorStats,
    Triggers,
)

__all__ = [
    "DEFAULT_SIMULATOR_API_KEY",
    "HostedImage",
    "ImageHost",
    "Simulator",
    "SimulatorConfig",
    "SimulatorStats",
    "Triggers",
    "build_app",
    "running_simulator",
    "serve_forever",
]

logger = logging.getLogger(__name__)


def _bind(host: str, port: int) -> socket.socket:
    """Bind before serving so port 0 resolves to a real port we can report at once."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _uvicorn_server(app: Starlette) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,  # access logs are harmless, but quiet tests read better
        lifespan="off",
        timeout_graceful_shutdown=2,
    )
    return uvicorn.Server(config)


class Simulator:
    """The simulator on a background thread, for in-process use by the pipeline and tests.

    Example::

        with Simulator(SimulatorConfig(image_scale=0.25)) as sim:
            httpx.post(f"{sim.base_url}/v1/ideogram-v3/generate",
                       headers={"Api-Key": sim.api_key}, json={"prompt": "a cat"})
            assert sim.stats.billed_images == 1

    ``port=0`` picks a free port; ``base_url`` is known as soon as :meth:`start` returns.
    ``image_host`` makes the image host misbehave (tests only; see the module docstring).
    """

    def __init__(
        self,
        config: SimulatorConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        image_host: ImageHost | None = None,
    ) -> None:
        self.config = config or SimulatorConfig()
        self.stats = SimulatorStats()
        self.app = build_app(self.config, self.stats, image_host)
        self.host = host
        self.port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def api_key(self) -> str:
        return self.config.api_key

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 5.0) -> Simulator:
        """Serve in a daemon thread and return once the socket accepts connections."""
        if self._thread is not None:
            raise RuntimeError("simulator already started")
        sock = _bind(self.host, self.port)
        self.port = sock.getsockname()[1]
        server = _uvicorn_server(self.app)
        thread = threading.Thread(
            target=server.run,
            kwargs={"sockets": [sock]},
            name=f"ideogram-simulator-{self.port}",
            daemon=True,
        )
        self._server, self._thread = server, thread
        thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                sock.close()
                raise RuntimeError("the Ideogram simulator did not start")
            time.sleep(0.005)
        logger.info("Ideogram simulator listening on %s", self.base_url)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Ask uvicorn to exit and wait for its thread, so no thread or socket leaks."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self._server = self._thread = None

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@contextmanager
def running_simulator(
    config: SimulatorConfig | None = None, *, image_host: ImageHost | None = None
) -> Iterator[Simulator]:
    """A started :class:`Simulator` on a free loopback port, stopped on exit."""
    with Simulator(config, image_host=image_host) as sim:
        yield sim


def serve_forever(
    host: str = "127.0.0.1", port: int = 0, config: SimulatorConfig | None = None
) -> None:
    """Serve in the foreground until Ctrl-C (for ``ideogram-pipeline simulator --port N``).

    Prints the base URL and the API key to use, since neither is a secret here.
    """
    config = config or SimulatorConfig()
    sock = _bind(host, port)
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    print(f"Ideogram simulator on http://{shown_host}:{sock.getsockname()[1]}", flush=True)
    print(f"IDEOGRAM_BASE_URL=http://{shown_host}:{sock.getsockname()[1]}", flush=True)
    print(f"IDEOGRAM_API_KEY={config.api_key}", flush=True)
    try:
        _uvicorn_server(build_app(config)).run(sockets=[sock])
    finally:
        sock.close()
