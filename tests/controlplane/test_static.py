"""The browser libraries are served from static/, identical to the pinned packages."""

from pathlib import Path

import django_htmx
import plotly
import pytest
from django.contrib.staticfiles import finders

VENDORED = {
    "vendor/plotly.min.js": Path(plotly.__file__).parent / "package_data/plotly.min.js",
    "vendor/htmx.min.js": Path(django_htmx.__file__).parent / "static/django_htmx/htmx-2.min.js",
}


@pytest.mark.parametrize(("static_path", "source"), VENDORED.items())
def test_vendored_library_matches_the_pinned_package(static_path, source):
    found = finders.find(static_path)
    assert found, f"{static_path} is not served from static/; run scripts/vendor-static"
    assert Path(found).read_bytes() == source.read_bytes(), "run scripts/vendor-static"
