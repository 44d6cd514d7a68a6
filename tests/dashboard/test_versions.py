"""``/versions/{id}/`` (the tuple per layer) and ``/versions/{id}/diff/{other}/`` (side
by side per layer, with the risk verdict and its reasons at the top)."""

from __future__ import annotations

import re

import pytest

from tests.conftest import BASE_TUPLE
from tests.dashboard.conftest import htmx
from versions.models import Agent

pytestmark = pytest.mark.django_db

TOOLS_BEFORE = [
    {
        "name": "search",
        "description": "Search the web",
        "input_schema": {
            "type": "object",
            "properties": {"query": {"type": "string"}},
            "required": ["query"],
        },
    },
    {"name": "fetch", "description": "Fetch a page", "input_schema": {"type": "object"}},
]
TOOLS_AFTER = [
    {
        "name": "search",
        "description": "Search the web",
        "input_schema": {
            "type": "object",
            "properties": {"query": {"type": "integer"}, "site": {"type": "string"}},
            "required": ["query"],
        },
    },
    {"name": "cite", "description": "Cite a source", "input_schema": {"type": "object"}},
]


@pytest.fixture
def pair(agent, make_version):
    before = make_version(
        agent,
        "v1",
        prompts={"system": "Be careful.\nCite sources.\nBe brief.", "few_shot": "Q: hi\nA: hello"},
        tools=TOOLS_BEFORE,
    )
    after = make_version(
        agent,
        "v2",
        model={"provider": "anthropic", "name": "claude-opus", "params": {"temperature": 0.7}},
        prompts={
            "system": "Be careful.\nCite every source.\nBe brief.",
            "few_shot": "Q: hi\nA: hello",
        },
        tools=TOOLS_AFTER,
    )
    return before, after


def test_the_version_page_lays_out_the_tuple_per_layer(viewer_browser, pair):
    before, after = pair
    response = viewer_browser.get(f"/versions/{after.pk}/")
    html = response.content.decode()
    assert response.status_code == 200
    assert after.fingerprint in html
    for layer in ("code", "model", "prompts", "tools"):
        assert f'<h2 id="layer-{layer}">{layer}</h2>' in html
        assert after.layer_fingerprints[layer] in html
    assert '<th scope="row">name</th><td>claude-opus</td>' in html
    assert '<th scope="row">params.temperature</th><td><code>0.7</code></td>' in html
    assert "Cite every source." in html
    assert "<code>cite</code>" in html
    # The selector compares with any other version, the previous one first.
    assert f'<option value="{before.pk}" selected>v1' in html


def test_the_version_page_escapes_what_the_tuple_holds(viewer_browser, agent, make_version):
    version = make_version(agent, prompts={"system": "<script>alert(1)</script>"})
    html = viewer_browser.get(f"/versions/{version.pk}/").content.decode()
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_the_diff_page_starts_with_the_verdict_and_its_reasons(viewer_browser, pair):
    before, after = pair
    response = viewer_browser.get(f"/versions/{after.pk}/diff/{before.pk}/")
    html = response.content.decode()
    assert response.status_code == 200
    verdict = html.index('id="verdict-title"')
    assert verdict < html.index('id="diff-code"')
    assert 'data-rainbow-required="true"' in html
    assert "Rainbow required" in html
    assert '<span class="tag tag-breaking">breaking</span>' in html
    assert "model changed from anthropic/claude-sonnet to anthropic/claude-opus" in html
    assert "tool &#x27;fetch&#x27; removed" in html


def test_the_diff_page_shows_prompts_side_by_side_with_the_similarity(viewer_browser, pair):
    before, after = pair
    html = viewer_browser.get(f"/versions/{after.pk}/diff/{before.pk}/").content.decode()
    # Parts come in name order: few_shot, then system.
    few_shot = html[html.index(">few_shot <") : html.index(">system <")]
    system = html[html.index(">system <") : html.index('id="diff-tools"')]
    similarity = float(re.search(r'data-similarity="([\d.]+)"', system).group(1))
    assert 0.8 < similarity < 1
    rows = re.findall(r'<tr class="line-(\w+)">', system)
    assert rows == ["same", "changed", "same"]
    assert '<span class="line-mark">~</span> Cite sources.' in system
    assert '<span class="line-mark">~</span> Cite every source.' in system
    assert '<span class="tag">unchanged</span>' in few_shot
    assert "<tr class=" not in few_shot


def test_the_diff_page_tables_tool_changes_and_marks_breaking_ones(viewer_browser, pair):
    before, after = pair
    html = viewer_browser.get(f"/versions/{after.pk}/diff/{before.pk}/").content.decode()
    tools = html[html.index('id="diff-tools"') :]
    found = re.findall(r'<tr class="tool-(\w+)( row-breaking)?" data-tool="(\w+)">', tools)
    assert found == [
        ("added", "", "cite"),
        ("removed", " row-breaking", "fetch"),
        ("modified", " row-breaking", "search"),
    ]
    assert "type of parameter &#x27;query&#x27; changed from string to integer" in tools
    assert "optional parameter &#x27;site&#x27; added" in tools


def test_the_diff_page_shows_the_model_before_and_after(viewer_browser, pair):
    before, after = pair
    html = viewer_browser.get(f"/versions/{after.pk}/diff/{before.pk}/").content.decode()
    model = html[html.index('id="diff-model"') : html.index('id="diff-prompts"')]
    assert re.search(
        r'<tr class="row-changed"><th scope="row">name</th><td><code>claude-sonnet</code></td>'
        r"<td><code>claude-opus</code></td><td>changed</td>",
        model,
    )
    assert re.search(r'<tr><th scope="row">provider</th>', model)
    assert "params.temperature" in model


def test_identical_tuples_say_so(viewer_browser, agent, make_version):
    one = make_version(agent, "one", code=BASE_TUPLE["code"])
    other = Agent.objects.create(slug="twin", name="Twin")
    make_version(other, "same", code=BASE_TUPLE["code"])
    html = viewer_browser.get(f"/versions/{one.pk}/diff/{one.pk}/").content.decode()
    assert "No rainbow required" in html
    assert "none: the tuples are identical" in html


def test_the_selector_compares_any_two_versions_of_the_agent(viewer_browser, pair, make_version):
    before, after = pair
    third = make_version(before.agent, "v3")
    response = viewer_browser.get(
        "/agents/research/compare/", {"before": third.pk, "after": before.pk}
    )
    assert response.status_code == 302
    assert response["Location"] == f"/versions/{before.pk}/diff/{third.pk}/"
    html = viewer_browser.get(f"/versions/{after.pk}/diff/{before.pk}/").content.decode()
    for version in (before, after, third):
        assert f'<option value="{version.pk}"' in html


def test_versions_of_two_agents_are_not_compared(viewer_browser, pair, make_version):
    before, _ = pair
    stranger = make_version(Agent.objects.create(slug="other", name="Other"), "x1")
    response = viewer_browser.get(f"/versions/{stranger.pk}/diff/{before.pk}/")
    assert response.status_code == 400
    assert "same agent" in response.content.decode()
    response = viewer_browser.get(
        "/agents/research/compare/", {"before": before.pk, "after": stranger.pk}
    )
    assert response.status_code == 400


@pytest.mark.parametrize(
    "query", [{}, {"before": "a", "after": "1"}, {"before": "0", "after": "1"}]
)
def test_bad_compare_input_is_a_400(viewer_browser, pair, query):
    assert viewer_browser.get("/agents/research/compare/", query).status_code == 400


def test_unknown_versions_are_404(viewer_browser, pair):
    before, _ = pair
    assert viewer_browser.get("/versions/999999/").status_code == 404
    assert viewer_browser.get(f"/versions/{before.pk}/diff/999999/").status_code == 404


def test_the_pages_render_whole_even_for_htmx(viewer_browser, pair):
    # Neither page has a partial: an htmx (boosted) request still gets the page.
    before, after = pair
    for url in (f"/versions/{after.pk}/", f"/versions/{after.pk}/diff/{before.pk}/"):
        assert "<html" in viewer_browser.get(url, **htmx(HTTP_HX_BOOSTED="true")).content.decode()
