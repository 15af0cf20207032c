"""Message templates: stored per id, rendered by a sandboxed Jinja2 that has no loader."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import jinja2
from jinja2 import ChainableUndefined, FunctionLoader, TemplateError, Undefined
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from sqlalchemy import Engine, delete, select, update

from remarket.errors import InvalidInput, NotFound
from remarket.schema.events import as_utc
from remarket.storage.state import channel_templates

__all__ = ["Rendered", "Template", "TemplateStore", "render", "template_context"]


class _Sandbox(ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox, stricter in two ways: reaching for an unsafe attribute
    is an error (not an empty value), and no template can be loaded (``include``,
    ``import`` and ``extends`` find nothing: no file is ever read)."""

    def unsafe_undefined(self, obj: Any, attribute: str) -> Undefined:
        raise SecurityError(
            f"access to attribute {attribute!r} of {type(obj).__name__!r} is unsafe"
        )


def _sandbox(*, autoescape: bool) -> _Sandbox:
    return _Sandbox(
        autoescape=autoescape,
        # A trait the profile lacks renders empty (use `| default(...)`), as in Liquid.
        undefined=ChainableUndefined,
        loader=FunctionLoader(lambda _name: None),
    )


_ENV_TEXT: Final = _sandbox(autoescape=False)
# HTML escapes every value: a trait such as a name cannot inject markup.
_ENV_HTML: Final = _sandbox(autoescape=True)


@dataclass(frozen=True, slots=True)
class Template:
    id: str
    channel: str
    subject: str | None
    html: str | None
    text: str
    updated_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Rendered:
    subject: str | None
    html: str | None
    text: str


def template_context(
    profile_id: str,
    traits: dict[str, Any],
    *,
    trigger: dict[str, Any] | None = None,
    variables: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What a template sees: ``profile`` (id and traits), ``event`` (the trigger),
    ``recommendations`` (a list, empty unless the caller fills it) and ``vars``."""
    extra = dict(variables or {})
    return {
        "profile": {"id": profile_id, **traits},
        "event": trigger or {},
        "recommendations": list(extra.pop("recommendations", []) or []),
        "vars": extra,
    }


@functools.lru_cache(maxsize=512)
def _compiled(source: str, html: bool) -> jinja2.Template:
    # Compiling is most of a render's cost; a template's text is its cache key.
    return (_ENV_HTML if html else _ENV_TEXT).from_string(source)


def _one(source: str | None, context: dict[str, Any], *, html: bool, part: str) -> str | None:
    if source is None:
        return None
    try:
        return _compiled(source, html).render(context)
    except TemplateError as exc:
        # SecurityError (a sandbox escape attempt) is a TemplateError too.
        raise InvalidInput(f"template {part} does not render: {exc}", field=part) from exc


def render(template: Template, context: dict[str, Any]) -> Rendered:
    """The template filled in; InvalidInput names the part that failed.

    >>> t = Template("t", "email", "Hi {{ profile.name }}", "<b>{{ profile.name }}</b>", "x")
    >>> render(t, template_context("p_1", {"name": "<Ann>"})).html
    '<b>&lt;Ann&gt;</b>'
    >>> render(Template("t", "sms", None, None, "{{ ''.__class__ }}"), {})
    Traceback (most recent call last):
    remarket.errors.InvalidInput: template text does not render: access to attribute '__class__' of 'str' is unsafe
    """  # noqa: E501
    subject = _one(template.subject, context, html=False, part="subject")
    return Rendered(
        subject=subject.strip() if subject is not None else None,
        html=_one(template.html, context, html=True, part="html"),
        text=_one(template.text, context, html=False, part="text") or "",
    )


def _check(template: Template) -> None:
    for part in ("subject", "html", "text"):
        source = getattr(template, part)
        if source is None:
            continue
        try:
            _ENV_TEXT.parse(source)
        except TemplateError as exc:
            raise InvalidInput(f"template {part} is not valid Jinja2: {exc}", field=part) from exc
    if template.channel == "email" and not template.subject:
        raise InvalidInput("an e-mail template needs a subject", field="subject")


def _template(row: Any) -> Template:
    return Template(row.id, row.channel, row.subject, row.html, row.text, as_utc(row.updated_at))


class TemplateStore:
    """Templates in the state store.

    >>> from datetime import UTC
    >>> from remarket.storage.state import connect_state, upgrade_state
    >>> engine = connect_state("sqlite://"); upgrade_state(engine)
    >>> store = TemplateStore(engine)
    >>> store.put(Template("hi", "sms", None, None, "Hi {{ profile.name }}"), now=datetime.now(UTC))
    True
    >>> store.get("hi").text
    'Hi {{ profile.name }}'
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def put(self, template: Template, *, now: datetime) -> bool:
        """Create or replace; True if it was created."""
        _check(template)
        values = {
            "channel": template.channel,
            "subject": template.subject,
            "html": template.html,
            "text": template.text,
            "updated_at": now,
        }
        with self._engine.begin() as conn:
            changed = conn.execute(
                update(channel_templates).where(channel_templates.c.id == template.id), values
            ).rowcount
            if changed:
                return False
            conn.execute(
                channel_templates.insert(), values | {"id": template.id, "created_at": now}
            )
            return True

    def get(self, template_id: str) -> Template:
        with self._engine.connect() as conn:
            row = conn.execute(
                select(channel_templates).where(channel_templates.c.id == template_id)
            ).one_or_none()
        if row is None:
            raise NotFound(f"no template {template_id!r}", field="template_id")
        return _template(row)

    def all(self) -> list[Template]:
        with self._engine.connect() as conn:
            rows = conn.execute(select(channel_templates).order_by(channel_templates.c.id))
            return [_template(row) for row in rows]

    def delete(self, template_id: str) -> None:
        with self._engine.begin() as conn:
            gone = conn.execute(
                delete(channel_templates).where(channel_templates.c.id == template_id)
            ).rowcount
        if not gone:
            raise NotFound(f"no template {template_id!r}", field="template_id")
