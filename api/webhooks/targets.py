"""Where a webhook may be sent: no server-side request forgery into the operator's network.

A target is `https` and its host resolves only to public (global unicast) addresses: no private, loopback,
link-local, multicast, unspecified, shared (CGNAT), reserved or documentation address, nor an IPv6 form that
embeds one (IPv4-mapped, NAT64, 6to4, Teredo). The URL is checked when an endpoint is created or changed (no DNS
then: a host may resolve differently later), and the resolved addresses at every attempt, right before it: the
attempt connects to an address it checked (`PinnedTarget`), never to a name resolved again, so DNS rebinding
cannot swap in a private address after the check. `TUNEWRIGHT_WEBHOOK_ALLOW_PRIVATE=true` lifts the address
rules and allows `http` (development, single-tenant installs).
"""

from __future__ import annotations

import ipaddress
import socket
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import anyio
import msgspec

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    Resolver = Callable[[str, int], Awaitable[list[str]]]

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_LOCAL_NAMES = ("localhost", "localhost.localdomain")


class RefusedTarget(Exception):  # noqa: N818 - the name reads as the condition
    """The URL or an address it resolves to is not one webhooks may reach; the message says why."""


class PinnedTarget(msgspec.Struct, kw_only=True, frozen=True):
    """One checked address to connect to, and the names the request must carry (`Host`, TLS SNI)."""

    address: str
    connect_url: str
    host_header: str
    sni_hostname: str | None


def url_refusal(url: str, *, allow_private: bool) -> str | None:
    """Why `url` may not be a webhook target, judged from the URL alone (no DNS), or None if it may."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "is not a valid URL"
    schemes = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in schemes:
        return "must use https" if not allow_private else "must use https or http"
    if not parts.hostname:
        return "has no host"
    if parts.username is not None or parts.password is not None:
        return "must not carry credentials"
    if port == 0:
        return "has port 0"
    if allow_private:
        return None
    host = parts.hostname.rstrip(".")
    if host in _LOCAL_NAMES or host.endswith(".localhost"):
        return "points at this machine"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None  # a name: checked after resolution, at every attempt
    reason = address_refusal(address)
    return None if reason is None else f"points at {reason}"


def address_refusal(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why webhooks may not reach `address` (e.g. "a private address (10.0.0.7)"), or None for a public one."""
    for candidate in _embedded(address):
        if candidate.is_loopback:
            kind = "a loopback address"
        elif candidate.is_link_local:
            kind = "a link-local address"
        elif candidate.is_multicast:
            kind = "a multicast address"
        elif candidate.is_unspecified:
            kind = "an unspecified address"
        elif not candidate.is_global:
            kind = "a private address"
        else:
            continue
        return f"{kind} ({address})"
    return None


def _embedded(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The address and every IPv4 address an IPv6 form carries inside it."""
    found: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            found.append(address.ipv4_mapped)
        if address.sixtofour is not None:
            found.append(address.sixtofour)
        if address.teredo is not None:
            found.extend(address.teredo)
        if address in _NAT64:
            found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return found


async def system_resolver(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to, in the resolver's order, without repeats."""
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def pin(url: str, *, allow_private: bool, resolver: Resolver) -> list[PinnedTarget]:
    """Resolve `url`'s host and return one target per address, every one of them checked.

    Raises:
        RefusedTarget: the URL is not allowed, the name does not resolve, or any address it resolves to is
            refused (one private answer refuses the whole name: the resolver's order is not ours to trust).
    """
    reason = url_refusal(url, allow_private=allow_private)
    if reason is not None:
        raise RefusedTarget(f"the URL {reason}")
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    try:
        addresses = [str(literal)] if literal is not None else await resolver(host, port)
    except OSError as exc:
        raise RefusedTarget(f"the host {host} does not resolve ({exc.strerror or exc})") from exc
    if not addresses:
        raise RefusedTarget(f"the host {host} does not resolve")
    checked = [ipaddress.ip_address(address) for address in addresses]
    if not allow_private:
        for address in checked:
            reason = address_refusal(address)
            if reason is not None:
                raise RefusedTarget(f"the host {host} resolves to {reason}")
    host_header = _bracketed(host) + (f":{parts.port}" if parts.port else "")
    return [
        PinnedTarget(
            address=str(address),
            connect_url=urlunsplit(
                (parts.scheme, f"{_bracketed(str(address))}:{port}", parts.path or "/", parts.query, "")
            ),
            host_header=host_header,
            sni_hostname=host if parts.scheme == "https" and literal is None else None,
        )
        for address in checked
    ]


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host
