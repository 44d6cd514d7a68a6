"""No request forgery through Prism: a webhook may only reach public addresses.

A URL is checked when a webhook is saved and again at every send, since what a name
resolves to can change in between. The send then connects to the very address that was
checked, so a name that resolves differently a moment later (DNS rebinding) gains
nothing.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

ALLOWED_SCHEMES = ("http", "https")
MAX_URL_CHARS = 2000


class UnsafeURL(ValueError):
    """A URL a webhook may not use; the message says why, for a 400."""


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str  # with the query string
    address: str  # the checked IP address to connect to


def _refusal(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for flag, what in (
        ("is_loopback", "loopback"),
        ("is_link_local", "link-local"),
        ("is_multicast", "multicast"),
        ("is_unspecified", "unspecified"),
        ("is_reserved", "reserved"),
        ("is_private", "private"),
    ):
        if getattr(address, flag):
            return what
    if not address.is_global:
        return "non-public"
    return None


def parse(url: object) -> tuple[str, str, int, str]:
    """(scheme, host, port, path) of an absolute http(s) URL; raises UnsafeURL."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL_CHARS:
        raise UnsafeURL(f"An http or https URL of at most {MAX_URL_CHARS} characters.")
    if any(ord(ch) <= 0x20 or ord(ch) == 0x7F for ch in url):
        raise UnsafeURL("The URL may not contain spaces or control characters.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UnsafeURL("Not a valid URL.") from None
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        raise UnsafeURL("Only http and https URLs are allowed.")
    if not parts.hostname:
        raise UnsafeURL("The URL names no host.")
    if parts.username is not None or parts.password is not None:
        raise UnsafeURL("Put no credentials in the URL: sign with the secret instead.")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return scheme, parts.hostname, port or (443 if scheme == "https" else 80), path


def resolve(url: object, *, allow_private: bool) -> Target:
    """Check ``url`` and pick the address to send to.

    1. Parse it: http or https, a host, no credentials.
    2. Resolve the host (an IP literal resolves to itself).
    3. Refuse it if any address it resolves to is loopback, private, link-local,
       multicast, reserved or unspecified, unless ``allow_private``: one bad address
       among good ones is refused too, since the connection could go to any of them.
    """
    scheme, host, port, path = parse(url)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeURL(f"The host {host!r} does not resolve: {exc}.") from None
    addresses = []
    for info in infos:
        text = str(info[4][0]).split("%", 1)[0]  # an IPv6 zone index is no part of it
        addresses.append(ipaddress.ip_address(text))
    if not addresses:
        raise UnsafeURL(f"The host {host!r} does not resolve.")
    if not allow_private:
        for address in addresses:
            why = _refusal(address)
            if why:
                raise UnsafeURL(
                    f"The host {host!r} resolves to {address}, a {why} address: webhooks "
                    "may only reach public addresses (PRISM_WEBHOOKS_ALLOW_PRIVATE=true "
                    "allows others)."
                )
    return Target(scheme, host, port, path, str(addresses[0]))
