"""No request forgery: webhook URLs reach public addresses only, unless allowed."""

from __future__ import annotations

import pytest

from events import urlguard

REFUSED = [
    ("http://127.0.0.1/hook", "loopback"),
    ("http://10.1.2.3/hook", "private"),
    ("http://192.168.0.7:8080/hook", "private"),
    ("http://[::1]/hook", "loopback"),
    ("http://169.254.169.254/latest/meta-data", "link-local"),
    ("http://0.0.0.0/", "unspecified"),
    ("http://224.0.0.1/", "multicast"),
    ("http://[::ffff:127.0.0.1]/", "loopback"),
    ("http://localhost:9/hook", "loopback"),  # a name that resolves to loopback
]


@pytest.mark.parametrize(("url", "why"), REFUSED)
def test_it_refuses_non_public_addresses(url, why):
    with pytest.raises(urlguard.UnsafeURL, match=f"a {why} address"):
        urlguard.resolve(url, allow_private=False)


@pytest.mark.parametrize(("url", "_why"), REFUSED)
def test_the_setting_allows_them(url, _why):
    assert urlguard.resolve(url, allow_private=True).port in (80, 8080, 9)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://93.184.215.14/", "Only http and https"),
        ("https://user:pw@93.184.215.14/", "no credentials"),
        ("http:///nohost", "names no host"),
        ("http://93.184.215.14/a b", "spaces"),
        ("http://no-such-host.invalid/", "does not resolve"),
        (42, "http or https URL"),
    ],
)
def test_it_refuses_what_is_no_usable_url(url, message):
    with pytest.raises(urlguard.UnsafeURL, match=message):
        urlguard.resolve(url, allow_private=False)


def test_a_public_address_is_sent_to_as_checked():
    target = urlguard.resolve("https://93.184.215.14/hooks/prism?team=a", allow_private=False)
    assert (target.scheme, target.port, target.path, target.address) == (
        "https",
        443,
        "/hooks/prism?team=a",
        "93.184.215.14",
    )
