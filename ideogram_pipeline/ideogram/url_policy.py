"""Which image URLs may be fetched, decided before a single byte is requested.

An API response names the URL the pipeline downloads next, so a compromised or spoofed
response (or a misconfigured proxy) could point it anywhere: at a cloud metadata service
(``http://169.254.169.254/``), at an internal admin page, or at a 10 GB file. The policy:

- **Hosts**: only Ideogram's image hosts (``ideogram.ai``, ``*.ideogram.ai``, or the list
  in ``IDEOGRAM_IMAGE_HOSTS``) and the configured API base URL's own host.
- **Scheme**: HTTPS on port 443 only, except the exact origin (scheme, host, port) of the
  configured API base URL, which is how the loopback simulator (``http://127.0.0.1:N``)
  is allowed without opening plain HTTP to anyone else.
- **Addresses**: the host is resolved and every address must be public: loopback,
  private, link-local (where cloud metadata lives), shared, multicast and reserved ranges
  are refused, IPv4-mapped and NAT64 IPv6 forms included. The configured API host is
  exempt, since the user chose it (the simulator lives on loopback).
- **Pinning**: the connection goes to the address that was checked (``Host`` header and TLS
  SNI keep the original name, so certificates are still verified against it); a DNS answer
  that changes between check and connect (DNS rebinding) therefore cannot redirect it.
- **Redirects**: followed by :mod:`ideogram_pipeline.ideogram.downloads`, at most
  :data:`MAX_REDIRECTS`, each target vetted by the same rules.

A refusal raises :class:`~ideogram_pipeline.ideogram.errors.UntrustedUrl` (never retried)
with a reason a person can act on; the row fails and nothing is fetched.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from ideogram_pipeline.ideogram.errors import TransportError, UntrustedUrl
from ideogram_pipeline.settings import (
    DEFAULT_BASE_URL,
    DEFAULT_IMAGE_HOSTS,
    DEFAULT_MAX_IMAGE_BYTES,
    Settings,
)

__all__ = [
    "MAX_REDIRECTS",
    "Resolver",
    "Target",
    "UrlPolicy",
    "address_refusal",
    "host_matches",
    "system_resolver",
]

MAX_REDIRECTS = 5
_DEFAULT_PORTS = {"http": 80, "https": 443}
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
#: Longest URL quoted back in an error message (URLs come from a response we do not trust).
_SHOWN_URL_CHARS = 160

#: ``(host, port) -> addresses``; tests inject one, production uses :func:`system_resolver`.
Resolver = Callable[[str, int], Awaitable[list[str]]]


async def system_resolver(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for ``host`` (without blocking the loop)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _shown(url: str) -> str:
    return url if len(url) <= _SHOWN_URL_CHARS else url[: _SHOWN_URL_CHARS - 1] + "…"


def host_matches(host: str, pattern: str) -> bool:
    """``ideogram.ai`` matches itself only; ``*.ideogram.ai`` matches any subdomain of it."""
    pattern = pattern.lower().rstrip(".")
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return host == pattern


def address_refusal(address: str) -> str | None:
    """Why a connection to ``address`` must be refused, or ``None`` for a public address."""
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(
            address.split("%", 1)[0]
        )
    except ValueError:
        return "unparseable"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip in _NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        elif ip.sixtofour is not None:
            ip = ip.sixtofour
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local (cloud metadata)"
    if ip.is_multicast:
        return "multicast"
    if ip.is_unspecified or ip.is_reserved:
        return "reserved"
    if ip.is_private:
        return "private"
    if not ip.is_global:
        return "non-public"
    return None


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Target:
    """A vetted URL: ``url`` as given, ``connect_url`` pinned to the checked address."""

    url: httpx.URL
    connect_url: httpx.URL
    headers: dict[str, str] = field(default_factory=dict)
    extensions: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class UrlPolicy:
    """The allow-list, the size cap and the redirect limit for image downloads.

    Build it with :meth:`from_settings`, passing the base URL actually in use (the embedded
    simulator's when no API key is set). ``resolver`` replaces DNS in tests.
    """

    api_base_url: str = DEFAULT_BASE_URL
    image_hosts: tuple[str, ...] = DEFAULT_IMAGE_HOSTS
    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_redirects: int = MAX_REDIRECTS
    resolver: Resolver | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings, api_base_url: str | None = None) -> UrlPolicy:
        return cls(
            api_base_url=api_base_url or settings.base_url,
            image_hosts=settings.image_hosts,
            max_bytes=settings.max_image_bytes,
        )

    @property
    def api_origin(self) -> tuple[str, str, int]:
        return _origin(httpx.URL(self.api_base_url))

    def check(self, url: str) -> httpx.URL:
        """The syntactic checks (scheme, credentials, host, port), without any network."""
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError, ValueError):
            raise UntrustedUrl(f"refused image URL {_shown(url)!r}: not a valid URL") from None
        if parsed.scheme not in _DEFAULT_PORTS:
            raise UntrustedUrl(
                f"refused image URL {_shown(url)!r}: scheme {parsed.scheme or '(none)'!r} "
                "is not https"
            )
        if parsed.userinfo:
            raise UntrustedUrl(f"refused image URL {_shown(url)!r}: it carries credentials")
        scheme, host, port = origin = _origin(parsed)
        if not host:
            raise UntrustedUrl(f"refused image URL {_shown(url)!r}: no host")
        if origin == self.api_origin:
            return parsed
        if scheme != "https":
            raise UntrustedUrl(
                f"refused image URL {_shown(url)!r}: plain http is allowed only for the "
                "configured API base URL (IDEOGRAM_BASE_URL)"
            )
        allowed = host == self.api_origin[1] or any(
            host_matches(host, pattern) for pattern in self.image_hosts
        )
        if not allowed:
            raise UntrustedUrl(
                f"refused image URL {_shown(url)!r}: host {host} is not an allowed Ideogram "
                f"image host (IDEOGRAM_IMAGE_HOSTS={','.join(self.image_hosts)})"
            )
        if port != 443:
            raise UntrustedUrl(f"refused image URL {_shown(url)!r}: port {port} is not 443")
        return parsed

    async def vet(self, url: str) -> Target:
        """Check ``url``, resolve its host, refuse non-public addresses, pin the connection."""
        parsed = self.check(url)
        _scheme, host, port = _origin(parsed)
        if host == self.api_origin[1]:
            return Target(parsed, parsed)  # the user's own choice; may be loopback
        if _is_ip_literal(host):
            addresses = [host]
        else:
            resolver = self.resolver or system_resolver
            try:
                addresses = await resolver(host, port)
            except OSError as exc:
                raise TransportError(f"cannot resolve image host {host}: {exc}") from exc
            if not addresses:
                raise TransportError(f"cannot resolve image host {host}: no addresses")
        for address in addresses:
            reason = address_refusal(address)
            if reason is not None:
                what = f"is a {reason}" if address == host else f"resolves to {address}, a {reason}"
                raise UntrustedUrl(f"refused image URL {_shown(url)!r}: {host} {what} address")
        if _is_ip_literal(host):
            return Target(parsed, parsed)
        pinned = parsed.copy_with(host=addresses[0])
        headers = {"Host": parsed.netloc.decode("ascii")}
        extensions = {"sni_hostname": host} if parsed.scheme == "https" else {}
        return Target(parsed, pinned, headers, extensions)


def _origin(url: httpx.URL) -> tuple[str, str, int]:
    host = url.raw_host.decode("ascii").lower().rstrip(".")
    return url.scheme, host, url.port or _DEFAULT_PORTS.get(url.scheme, 0)
