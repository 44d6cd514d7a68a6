"""Every page works offline (no external URL) and carries CSRF for htmx on <body>."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.staticfiles import finders

from tests.dashboard.test_auth import pages

pytestmark = pytest.mark.django_db

# Any absolute or protocol-relative URL in an attribute, or a CSS url().
EXTERNAL = re.compile(
    r"""(?:src|href|action|hx-\w+)\s*=\s*["'](?:https?:)?//|url\(\s*["']?(?:https?:)?//"""
)


def test_no_page_references_an_external_url(manager, rollout_fleet):
    for url in [*pages(rollout_fleet), "/login/"]:
        response = manager.get(url)
        assert response.status_code in (200, 302), url
        if response.status_code == 200:
            html = response.content.decode()
            assert not EXTERNAL.search(html), (url, EXTERNAL.search(html))
            for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', html):
                assert finders.find(asset.removeprefix(settings.STATIC_URL)), asset


def test_the_dashboards_own_css_and_js_fetch_nothing_from_outside():
    for name in ("css/prism.css", "js/prism.js"):
        text = Path(finders.find(name)).read_text()
        assert "http://" not in text, name
        assert "https://" not in text, name
        assert "@import" not in text


def test_every_page_sends_csrf_in_hx_headers_on_body(manager, rollout_fleet):
    for url in pages(rollout_fleet):
        response = manager.get(url)
        if response.status_code == 302:  # the compare selector redirects to a diff
            continue
        html = response.content.decode()
        token = re.search(r'<body hx-headers=\'\{"X-CSRFToken": "(\w+)"\}\'>', html)
        assert token, url
        assert len(token.group(1)) >= 32


def test_charts_load_plotly_from_static_only_where_needed(manager, rollout_fleet):
    board = manager.get("/agents/research/").content.decode()
    assert '<script src="/static/vendor/plotly.min.js" defer></script>' in board
    assert '<script src="/static/vendor/htmx.min.js" defer></script>' in board
    assert "plotly" not in manager.get("/agents/research/audit/").content.decode()
