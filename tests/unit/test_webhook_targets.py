"""Webhook targets (no SSRF into private networks), Standard Webhooks signatures, retry delays."""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Awaitable, Callable

import anyio
import openai
import pytest

from tunewright.api.webhooks.delivery import next_delay
from tunewright.api.webhooks.signing import new_secret, signature_headers
from tunewright.api.webhooks.targets import PinnedTarget, RefusedTarget, address_refusal, pin, url_refusal


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "a loopback address"),
        ("::1", "a loopback address"),
        ("10.0.0.7", "a private address"),
        ("172.16.5.4", "a private address"),
        ("192.168.1.1", "a private address"),
        ("100.64.0.1", "a private address"),  # shared address space (carrier-grade NAT)
        ("fc00::1", "a private address"),
        ("169.254.169.254", "a link-local address"),  # cloud metadata
        ("fe80::1", "a link-local address"),
        ("224.0.0.1", "a multicast address"),
        ("ff02::1", "a multicast address"),
        ("0.0.0.0", "an unspecified address"),
        ("::", "an unspecified address"),
        ("::ffff:10.0.0.1", "a private address"),  # IPv4-mapped
        ("64:ff9b::7f00:1", "a loopback address"),  # NAT64 of 127.0.0.1
        ("2002:a9fe:a9fe::", "a link-local address"),  # 6to4 of 169.254.169.254
        ("192.0.2.1", "a private address"),  # documentation
        ("240.0.0.1", "a private address"),  # reserved
    ],
)
def test_addresses_outside_the_public_internet_are_refused(address: str, kind: str) -> None:
    assert address_refusal(ipaddress.ip_address(address)) == f"{kind} ({ipaddress.ip_address(address)})"


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:2800:220:1:248:1893:25c8:1946"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert address_refusal(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://hooks.example.com/path?q=1", None),
        ("https://8.8.8.8:8443/", None),
        ("http://hooks.example.com/", "must use https"),
        ("ftp://hooks.example.com/", "must use https"),
        ("https:///nohost", "has no host"),
        ("https://user:secret@hooks.example.com/", "must not carry credentials"),
        ("https://hooks.example.com:99999/", "is not a valid URL"),
        ("https://localhost/", "points at this machine"),
        ("https://api.localhost/", "points at this machine"),
        ("https://127.0.0.1/", "points at a loopback address (127.0.0.1)"),
        ("https://[::1]:8443/", "points at a loopback address (::1)"),
        ("https://169.254.169.254/", "points at a link-local address (169.254.169.254)"),
    ],
)
def test_urls_are_judged_without_dns(url: str, reason: str | None) -> None:
    assert url_refusal(url, allow_private=False) == reason


def test_allowing_private_targets_allows_http_and_loopback_but_not_other_schemes() -> None:
    assert url_refusal("http://127.0.0.1:9000/hooks", allow_private=True) is None
    assert url_refusal("https://localhost/", allow_private=True) is None
    assert url_refusal("file:///etc/passwd", allow_private=True) == "must use https or http"


def resolving(*addresses: str) -> Callable[[str, int], Awaitable[list[str]]]:
    async def resolver(host: str, port: int) -> list[str]:
        return list(addresses)

    return resolver


def test_pin_connects_to_each_checked_address_with_the_names_the_request_needs() -> None:
    targets = anyio.run(
        lambda: pin(
            "https://hooks.example.com:8443/in?x=1",
            allow_private=False,
            resolver=resolving("93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"),
        )
    )
    assert targets == [
        PinnedTarget(
            address="93.184.216.34",
            connect_url="https://93.184.216.34:8443/in?x=1",
            host_header="hooks.example.com:8443",
            sni_hostname="hooks.example.com",
        ),
        PinnedTarget(
            address="2606:2800:220:1:248:1893:25c8:1946",
            connect_url="https://[2606:2800:220:1:248:1893:25c8:1946]:8443/in?x=1",
            host_header="hooks.example.com:8443",
            sni_hostname="hooks.example.com",
        ),
    ]


def test_pin_refuses_a_name_with_any_private_answer() -> None:
    with pytest.raises(RefusedTarget, match=r"resolves to a private address \(10\.0\.0\.1\)"):
        anyio.run(
            lambda: pin(
                "https://hooks.example.com/", allow_private=False, resolver=resolving("93.184.216.34", "10.0.0.1")
            )
        )


def test_pin_reports_a_name_that_does_not_resolve() -> None:
    async def failing(host: str, port: int) -> list[str]:
        raise OSError(-2, "Name or service not known")

    with pytest.raises(RefusedTarget, match="does not resolve"):
        anyio.run(lambda: pin("https://nowhere.example/", allow_private=False, resolver=failing))


def test_signatures_are_what_the_sdk_verifies_with_either_secret() -> None:
    client = openai.OpenAI(api_key="unused", max_retries=0)
    current, previous, stranger = new_secret(), new_secret(), new_secret()
    body = json.dumps({"id": "evt_1", "object": "event", "type": "fine_tuning.job.failed", "created_at": 1}).encode()
    headers = signature_headers("wh_1", int(time.time()), body, [current, previous])
    for secret in (current, previous):
        client.webhooks.verify_signature(body, headers, secret=secret)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        client.webhooks.verify_signature(body, headers, secret=stranger)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        client.webhooks.verify_signature(body + b" ", headers, secret=current)
    stale = signature_headers("wh_1", int(time.time()) - 3600, body, [current])
    with pytest.raises(openai.InvalidWebhookSignatureError):
        client.webhooks.verify_signature(body, stale, secret=current)


def test_retry_delays_grow_exponentially_with_jitter_up_to_the_cap() -> None:
    for attempts, ceiling in ((1, 10), (2, 20), (3, 40), (9, 2560), (10, 3600), (50, 3600), (10_000, 3600)):
        delays = [next_delay(attempts, base_s=10, max_s=3600) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays), (attempts, min(delays), max(delays))
        assert len(set(delays)) > 1  # jittered
