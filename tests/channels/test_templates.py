"""Templates: a sandboxed Jinja2 that reaches neither Python internals nor files; the
context (profile traits, triggering event, recommendations, variables); escaping."""

from __future__ import annotations

from pathlib import Path

import pytest

from remarket.channels.templates import Template, render, template_context
from remarket.errors import InvalidInput

ESCAPES = [
    pytest.param("{{ ''.__class__.__mro__[1].__subclasses__() }}", id="subclasses"),
    pytest.param("{{ profile.__class__ }}", id="dunder-attribute"),
    pytest.param("{{ recommendations.__class__.__base__ }}", id="dunder-base"),
    pytest.param("{{ vars.update({'x': 1}) }}", id="mutating-a-dict"),
    pytest.param("{{ recommendations.append(1) }}", id="mutating-a-list"),
    pytest.param("{{ cycler.__init__.__globals__ }}", id="globals"),
    pytest.param("{{ lipsum.__globals__['os'] }}", id="os-through-globals"),
    pytest.param("{% include '/etc/passwd' %}", id="include-a-file"),
    pytest.param("{% import 'os' as os %}", id="import"),
    pytest.param("{% extends 'base.html' %}", id="extends"),
]


@pytest.mark.parametrize("source", ESCAPES)
def test_a_template_cannot_reach_python_internals_or_files(source: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        render(Template("t", "sms", None, None, source), template_context("p_1", {}))
    assert caught.value.field == "text"


def test_no_file_is_read_even_next_to_the_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "secret.txt").write_text("TOP SECRET")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidInput):
        render(Template("t", "sms", None, None, "{% include 'secret.txt' %}"), {})


def test_context_traits_event_recommendations_and_variables() -> None:
    template = Template(
        "t",
        "email",
        "{{ profile.first_name | default('there') }}",
        "<p>{{ profile.first_name }}</p>"
        "{% for r in recommendations %}<i>{{ r.name }}</i>{% endfor %}",
        "{{ event.event }} {{ event.properties.sku }} {{ vars.code }} {{ profile.missing.deep }}.",
    )
    context = template_context(
        "p_1",
        {"first_name": "<Zoë>"},
        trigger={"event": "Product Viewed", "properties": {"sku": "S-1"}},
        variables={"code": "X1", "recommendations": [{"name": "Boots & Co"}]},
    )
    rendered = render(template, context)
    assert rendered.subject == "<Zoë>"
    assert rendered.html == "<p>&lt;Zoë&gt;</p><i>Boots &amp; Co</i>"
    assert rendered.text == "Product Viewed S-1 X1 ."
    anonymous = render(template, template_context("p_2", {}))
    assert anonymous.subject == "there"


def test_a_syntax_error_names_the_part() -> None:
    from datetime import UTC, datetime

    from remarket.channels.templates import TemplateStore
    from remarket.storage.state import connect_state, upgrade_state

    engine = connect_state("sqlite://")
    upgrade_state(engine)
    with pytest.raises(InvalidInput) as caught:
        TemplateStore(engine).put(
            Template("t", "email", "ok", "{% if %}", "x"), now=datetime.now(UTC)
        )
    assert caught.value.field == "html"
