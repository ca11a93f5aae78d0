"""Outbound requests to addresses users name (webhook_url, audio_url), checked against SSRF.

A user-supplied URL must not make the platform reach what only the platform can reach: loopback,
link-local (the cloud metadata service at 169.254.169.254 among them), private, shared (CGNAT),
multicast or reserved addresses, in IPv4 or IPv6 (IPv4-mapped addresses included). The host is
resolved once, every address it resolves to is checked, and the request then goes to that
checked address (`Pinned.ip`), so a DNS answer that changes between the check and the connection
(DNS rebinding) cannot redirect it. Redirects are never followed by the callers.

Operators open exceptions on purpose: networks (`MOSS_EGRESS_ALLOW_NETWORKS`, CIDRs such as an
in-cluster receiver's) and, for audio_url, the hosts it may name (`MOSS_AUDIO_URL_HOSTS`).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from .settings import Settings

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_URL_LENGTH = 2048


class EgressRefused(ValueError):
    """A URL the platform will not call; `code` is the API error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Pinned:
    """A URL with its host resolved and checked: connect to `ip`, send `host` (Host, SNI)."""

    url: str
    scheme: str
    host: str
    port: int
    ip: Address

    @property
    def pinned_url(self) -> str:
        """The URL with the checked address in place of the host name."""
        parts = urlsplit(self.url)
        literal = f"[{self.ip}]" if self.ip.version == 6 else str(self.ip)
        return parts._replace(netloc=f"{literal}:{self.port}").geturl()

    @property
    def host_header(self) -> str:
        default = {"http": 80, "https": 443}[self.scheme]
        name = f"[{self.host}]" if ":" in self.host else self.host
        return name if self.port == default else f"{name}:{self.port}"


def parse_networks(spec: str | list[str] | None) -> list[Network]:
    """`10.0.0.0/8, 127.0.0.1` -> networks (a bare address is a /32 or /128)."""
    items = spec.split(",") if isinstance(spec, str) else list(spec or [])
    return [ipaddress.ip_network(item.strip(), strict=False) for item in items if item.strip()]


def is_public(ip: Address) -> bool:
    """Globally routable unicast: not loopback, link-local, private, CGNAT, multicast, ..."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def resolve(host: str, port: int) -> list[Address]:
    """Every address the host resolves to (a literal address resolves to itself)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise EgressRefused("url_unresolvable", f"cannot resolve host {host!r}") from exc
    addresses = []
    for *_, sockaddr in infos:
        ip = ipaddress.ip_address(sockaddr[0].split("%", 1)[0])
        if ip not in addresses:
            addresses.append(ip)
    return addresses


def check_url(
    url: str,
    *,
    allow_networks: list[Network] = (),  # type: ignore[assignment]
    trusted_hosts: frozenset[str] = frozenset(),
    field: str = "url",
) -> Pinned:
    """Resolve and check a user's URL once; raise EgressRefused with a code for the API.

    `trusted_hosts` (lower-case names, host or host:port) skip the address check: hosts the
    operator configured, such as the object store's endpoint for presigned URLs.
    """
    if len(url) > MAX_URL_LENGTH:
        raise EgressRefused("invalid_url", f"{field} is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise EgressRefused("invalid_url", f"{field} is not a valid URL: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise EgressRefused("invalid_url", f"{field} must be an http:// or https:// URL")
    if parts.username or parts.password:
        raise EgressRefused("invalid_url", f"{field} must not carry credentials")
    host = parts.hostname.lower()
    port = port or (443 if scheme == "https" else 80)
    addresses = resolve(host, port)
    trusted = host in trusted_hosts or f"{host}:{port}" in trusted_hosts
    for ip in addresses:
        if trusted or is_public(ip) or any(ip in net for net in allow_networks):
            continue
        raise EgressRefused(
            "url_forbidden",
            f"{field} resolves to {ip}, a loopback, private, link-local or reserved address; "
            "the platform does not call those unless the operator allows the network "
            "(MOSS_EGRESS_ALLOW_NETWORKS)",
        )
    return Pinned(url=url, scheme=scheme, host=host, port=port, ip=addresses[0])


def check_webhook_url(url: str, settings: Settings) -> Pinned:
    return check_url(
        url, allow_networks=parse_networks(settings.egress_allow_networks), field="webhook_url"
    )


def check_audio_url(url: str, settings: Settings) -> Pinned:
    """audio_url may name the object store (a presigned URL), the hosts the operator listed in
    MOSS_AUDIO_URL_HOSTS (trusted, private ones too), or with `*` any public host."""
    listed = {h.strip().lower() for h in settings.audio_url_hosts.split(",") if h.strip()}
    trusted = set(listed - {"*"})
    if settings.storage == "s3" and settings.s3_endpoint:
        endpoint = settings.s3_endpoint
        host = urlsplit(endpoint if "://" in endpoint else f"//{endpoint}").hostname
        trusted.add((host or "").lower())
    pinned = check_url(
        url,
        allow_networks=parse_networks(settings.egress_allow_networks),
        trusted_hosts=frozenset(trusted),
        field="audio_url",
    )
    if (
        "*" not in listed
        and pinned.host not in trusted
        and f"{pinned.host}:{pinned.port}" not in trusted
    ):
        raise EgressRefused(
            "audio_url_host_not_allowed",
            f"audio_url may not name {pinned.host}: this deployment fetches audio from its "
            "object store (presigned URLs) and the hosts in MOSS_AUDIO_URL_HOSTS only",
        )
    return pinned
