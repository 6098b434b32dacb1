"""Only trusted downloads: the URL policy, redirects, size cap and content checks.

Real components: the bundled simulator on loopback, given the tests' hostile image host
(``tests/support/hostile_host.py``: foreign and metadata-address URLs, redirects, an endless
body, an HTML page) through its ``image_host`` extension point. DNS is replaced only where
a test needs a name to resolve to a chosen address (``resolver=``), and one
``httpx.MockTransport`` test checks the pinned request's exact shape.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ideogram_pipeline import history
from ideogram_pipeline.batches.files import load_batch
from ideogram_pipeline.ideogram.client import IdeogramClient, RetryPolicy
from ideogram_pipeline.ideogram.errors import (
    CorruptImage,
    ImageTooLarge,
    UnexpectedContent,
    UntrustedUrl,
)
from ideogram_pipeline.ideogram.generation import GenerationRequest
from ideogram_pipeline.ideogram.url_policy import UrlPolicy, address_refusal, host_matches
from ideogram_pipeline.images.safety import ImageRejected, check_png
from ideogram_pipeline.runs.runner import execute_batch
from ideogram_pipeline.settings import SettingsError, load_settings
from ideogram_pipeline.simulator.server import Simulator, SimulatorConfig, running_simulator
from tests.support.hostile_host import HostileImageHost

PUBLIC = "93.184.215.14"
#: Hostile-host triggers and what the failed row's error must say.
HOSTILE = {
    "[sim:foreign-url]": "images.attacker.example is not an allowed Ideogram image host",
    "[sim:private-url]": "169.254.169.254 is not an allowed Ideogram image host",
    "[sim:redirect-foreign]": "the image host redirected: refused image URL",
    "[sim:redirect-loop]": "redirected more than 5 times",
    "[sim:huge]": "passed the 1000000-byte cap (IDEOGRAM_MAX_IMAGE_BYTES)",
    "[sim:not-png]": "sent text/html, not an image",
}


def _resolver(mapping: dict[str, list[str]]):
    async def resolve(host: str, port: int) -> list[str]:
        return mapping[host]

    return resolve


def _vet(policy: UrlPolicy, url: str):
    return asyncio.run(policy.vet(url))


# -- the policy on its own ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "pattern", "expected"),
    [
        ("ideogram.ai", "ideogram.ai", True),
        ("a.ideogram.ai", "*.ideogram.ai", True),
        ("a.b.ideogram.ai", "*.ideogram.ai", True),
        ("ideogram.ai", "*.ideogram.ai", False),
        ("evilideogram.ai", "*.ideogram.ai", False),
        ("ideogram.ai.evil.example", "ideogram.ai", False),
    ],
)
def test_host_patterns(host: str, pattern: str, expected: bool) -> None:
    assert host_matches(host, pattern) is expected


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("169.254.169.254", "link-local (cloud metadata)"),
        ("10.1.2.3", "private"),
        ("192.168.0.1", "private"),
        ("fd00:ec2::254", "private"),
        ("100.100.100.200", "non-public"),  # shared address space (Alibaba metadata)
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped IPv6
        ("64:ff9b::a9fe:a9fe", "link-local (cloud metadata)"),  # NAT64 of 169.254.169.254
        ("0.0.0.0", "reserved"),
        ("224.0.0.1", "multicast"),
        (PUBLIC, None),
        ("2606:4700::1111", None),
    ],
)
def test_address_classes(address: str, reason: str | None) -> None:
    assert address_refusal(address) == reason


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("https://images.attacker.example/a.png", "not an allowed Ideogram image host"),
        ("http://ideogram.ai/a.png", "plain http"),
        ("ftp://ideogram.ai/a.png", "not https"),
        ("https://user:pw@ideogram.ai/a.png", "credentials"),
        ("https://ideogram.ai:8443/a.png", "port 8443"),
        ("https://ideogram.ai.attacker.example/a.png", "not an allowed"),
        ("not a url at all", "not https"),
        ("https:///a.png", "no host"),
    ],
)
def test_refusals_before_any_network(url: str, needle: str) -> None:
    with pytest.raises(UntrustedUrl, match=needle):
        UrlPolicy().check(url)


def test_allowed_hosts_resolve_and_are_pinned() -> None:
    policy = UrlPolicy(resolver=_resolver({"ideogram.ai": [PUBLIC]}))
    target = _vet(policy, "https://ideogram.ai/api/images/ephemeral/x.png?exp=1&sig=2")
    assert target.connect_url.host == PUBLIC
    assert target.connect_url.path == "/api/images/ephemeral/x.png"
    assert target.headers == {"Host": "ideogram.ai"}
    assert target.extensions == {"sni_hostname": "ideogram.ai"}


def test_a_name_resolving_to_a_private_address_is_refused() -> None:
    policy = UrlPolicy(resolver=_resolver({"img.ideogram.ai": [PUBLIC, "10.0.0.7"]}))
    with pytest.raises(UntrustedUrl, match=r"img.ideogram.ai resolves to 10.0.0.7, a private"):
        _vet(policy, "https://img.ideogram.ai/a.png")


def test_real_dns_localhost_is_refused_even_when_allow_listed() -> None:
    policy = UrlPolicy(image_hosts=("localhost",))  # an operator's mistake
    with pytest.raises(UntrustedUrl, match="loopback"):
        _vet(policy, "https://localhost/a.png")


def test_the_configured_api_host_is_exempt() -> None:
    policy = UrlPolicy(api_base_url="http://127.0.0.1:8765")
    target = _vet(policy, "http://127.0.0.1:8765/api/images/ephemeral/x.png")
    assert target.connect_url == target.url  # not pinned, not refused
    with pytest.raises(UntrustedUrl, match="plain http"):
        _vet(policy, "http://127.0.0.1:9999/x.png")  # same host, other port: another origin


def test_settings_configure_hosts_and_cap() -> None:
    settings = load_settings(
        {
            "IDEOGRAM_IMAGE_HOSTS": "cdn.example.com, *.img.example.com",
            "IDEOGRAM_MAX_IMAGE_BYTES": "9",
        }
    )
    policy = UrlPolicy.from_settings(settings, "https://api.ideogram.ai")
    assert policy.image_hosts == ("cdn.example.com", "*.img.example.com")
    assert policy.max_bytes == 9
    policy.check("https://api.ideogram.ai/x.png")  # the API host is always allowed
    with pytest.raises(UntrustedUrl):
        policy.check("https://ideogram.ai/x.png")  # replaced, not extended
    for bad in ("*", "https://x.com", "a/b", "*.*.x.com"):
        with pytest.raises(SettingsError, match="IDEOGRAM_IMAGE_HOSTS"):
            load_settings({"IDEOGRAM_IMAGE_HOSTS": bad})


def test_pinned_request_keeps_the_name_for_host_header_and_tls() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, headers={"content-type": "text/html"}, content=b"<html>")

    policy = UrlPolicy(resolver=_resolver({"ideogram.ai": [PUBLIC]}))

    async def go() -> None:
        async with IdeogramClient(
            "https://api.ideogram.ai",
            "k",
            transport=httpx.MockTransport(handler),
            url_policy=policy,
            retry=RetryPolicy(max_attempts=1),
        ) as client:
            await client.download("https://ideogram.ai/api/images/ephemeral/x.png")

    with pytest.raises(UnexpectedContent, match="text/html"):
        asyncio.run(go())
    (request,) = seen
    assert request.url.host == PUBLIC and request.headers["host"] == "ideogram.ai"
    assert request.extensions["sni_hostname"] == "ideogram.ai"
    assert "api-key" not in request.headers


# -- against the simulator as a hostile image host ----------------------------------------------


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    host = HostileImageHost(huge_bytes=8 * 1024 * 1024)
    with running_simulator(SimulatorConfig(image_scale=0.25), image_host=host) as s:
        yield s


def _download(sim: Simulator, trigger: str, **policy_args: object) -> bytes:
    async def go() -> bytes:
        policy = UrlPolicy(api_base_url=sim.base_url, **policy_args)  # type: ignore[arg-type]
        retry = RetryPolicy(max_attempts=3, base_delay_s=0.001, max_delay_s=0.01)
        async with IdeogramClient(
            sim.base_url, sim.api_key, url_policy=policy, retry=retry
        ) as client:
            response = await client.generate(GenerationRequest(row=1, prompt=f"a fox {trigger}"))
            url = response.images[0].url
            assert url is not None
            data, _attempts = await client.download(url)
            return data

    return asyncio.run(go())


def test_the_shipped_simulator_has_no_hostile_host() -> None:
    """Without the tests' image host the triggers are plain prompt text: a good image."""
    with running_simulator(SimulatorConfig(image_scale=0.25)) as plain:
        for trigger in [*HOSTILE, "[sim:redirect]"]:
            assert check_png(_download(plain, trigger))
        assert plain.stats.snapshot()["downloads_by_status"] == {"200": len(HOSTILE) + 1}


def test_a_redirect_within_the_allow_list_is_followed(sim: Simulator) -> None:
    before = sim.stats.snapshot()["downloads_by_status"].get("302", 0)
    assert check_png(_download(sim, "[sim:redirect]"))
    assert sim.stats.snapshot()["downloads_by_status"]["302"] == before + 1


@pytest.mark.parametrize(
    ("trigger", "error", "needle"),
    [
        ("[sim:foreign-url]", UntrustedUrl, "images.attacker.example is not an allowed"),
        ("[sim:private-url]", UntrustedUrl, "169.254.169.254 is not an allowed"),
        ("[sim:redirect-foreign]", UntrustedUrl, "redirected: refused image URL"),
        ("[sim:redirect-loop]", UntrustedUrl, "redirected more than 5 times"),
        ("[sim:huge]", ImageTooLarge, "1000000-byte cap"),
        ("[sim:not-png]", UnexpectedContent, "text/html, not an image"),
    ],
)
def test_hostile_answers_are_refused(
    sim: Simulator, trigger: str, error: type[Exception], needle: str
) -> None:
    with pytest.raises(error, match=needle) as caught:
        _download(sim, f"{trigger} {error.__name__}", max_bytes=1_000_000)
    assert caught.value.attempts == 1  # refusals are final: never retried


def test_metadata_address_is_refused_even_when_allow_listed(sim: Simulator) -> None:
    with pytest.raises(UntrustedUrl, match=r"169\.254\.169\.254 is a link-local"):
        _download(sim, "[sim:private-url] allow-listed", image_hosts=("169.254.169.254",))


def test_the_default_cap_is_50_mb_and_streams(sim: Simulator) -> None:
    assert UrlPolicy().max_bytes == 50 * 1024 * 1024
    # 8 MiB of body passes a 50 MB cap, then fails only the PNG check (no IEND).
    with pytest.raises(CorruptImage, match="truncated"):
        _download(sim, "[sim:huge] default cap")


def test_decompression_bombs_are_refused_before_storing() -> None:
    header = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR"
    bomb = header + (100_000).to_bytes(4, "big") * 2 + b"\x08\x02\x00\x00\x00crc!IEND\xaeB`\x82"
    with pytest.raises(ImageRejected, match="decompression bomb") as caught:
        check_png(bomb)
    assert not caught.value.transient


def test_refused_rows_fail_with_a_reason_and_nothing_is_stored(
    sim: Simulator, tmp_path: Path
) -> None:
    triggers = ["", *HOSTILE, "[sim:redirect]"]
    csv = tmp_path / "hostile-hosts.csv"
    rows = [f'"A lantern on a pier, take {n} {t}"' for n, t in enumerate(triggers, start=1)]
    csv.write_text("prompt\n" + "\n".join(rows) + "\n", encoding="utf-8")
    settings = load_settings(
        {
            "IDEOGRAM_API_KEY": sim.api_key,
            "IDEOGRAM_BASE_URL": sim.base_url,
            "IDEOGRAM_STORAGE": str(tmp_path / "data"),
            "IDEOGRAM_MAX_IMAGE_BYTES": "1000000",
        }
    )
    summary = execute_batch(load_batch(csv), settings)
    assert (summary.stored, summary.failed) == (2, len(HOSTILE))
    con = history.connect(settings)
    try:
        outcome = dict(
            con.execute(
                "SELECT \"row\", status || ': ' || coalesce(error, '') FROM generations"
            ).fetchall()
        )
        stored = [
            Path(uri)
            for (uri,) in con.execute(
                "SELECT stored_uri FROM generations WHERE status = 'stored'"
            ).fetchall()
        ]
    finally:
        con.close()
    for row, needle in enumerate(HOSTILE.values(), start=2):
        assert outcome[row].startswith("failed: ") and needle in outcome[row], outcome[row]
    # Only the two good images reached the store; nothing of the refused rows did.
    on_disk = sorted((tmp_path / "data" / "images").rglob("*.png"))
    assert sorted(stored) == on_disk and len(on_disk) == 2
