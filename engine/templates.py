"""Message templates: Jinja2, sandboxed, strict about undefined variables.

A message must never go out half-rendered, so the environment uses `StrictUndefined`: a typo
such as `{{ profile.frist_name }}` fails the send with a message naming the file, the line and
the missing attribute, and the runtime records it. Every template is compiled once when the
rules are loaded; syntax errors are collected as `Problem`s so `herald validate` can report
them together with every other problem in the rules folder.

Files in `rules/templates/` are named `NAME.CHANNEL.j2` or `NAME.CHANNEL.LOCALE.j2`. An email
template's first line may be `Subject: ...` (itself a template); the body follows, with one
blank separator line dropped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from types import TracebackType
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from jinja2 import StrictUndefined, Template, meta, nodes
from jinja2.exceptions import TemplateSyntaxError, UndefinedError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from engine.errors import ExpressionError, Problem, TemplateRenderError
from engine.expressions import to_moment

__all__ = [
    "CompiledTemplate",
    "Rendered",
    "TemplateStore",
    "check_value",
    "compile_inline",
    "format_date",
    "money",
    "render_value",
    "value_names",
]

# --------------------------------------------------------------------------- filters


def money(value: Any, symbol: str = "") -> str:
    """`{{ 1234.5 | money }}` → `1,234.50`; `{{ amount | money('¥') }}` → `¥1,234.50`.

    Rounds half up (what a price tag does), via Decimal so 2.675 does not become 2.67.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal | str):
        raise TypeError(f"money: expected a number, got {value!r}")
    try:
        amount = Decimal(str(value).strip()).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    except InvalidOperation:
        raise TypeError(f"money: expected a number, got {value!r}") from None
    if not amount.is_finite():
        raise TypeError(f"money: expected a finite number, got {value!r}")
    sign = "-" if amount < 0 else ""
    return f"{sign}{symbol}{abs(amount):,.2f}"


_DATE_ONLY = re.compile(r"\d{4}-\d{2}-\d{2}")


def format_date(value: Any, fmt: str = "%Y-%m-%d", tz: str | None = None) -> str:
    """`{{ event.timestamp | date('%d/%m %H:%M', profile.timezone) }}`.

    Accepts datetimes, dates, ISO-8601 strings and epoch seconds. `tz` (an IANA name) converts
    a point in time to the user's clock; a plain date (`1990-05-07`) is never shifted.
    """
    if isinstance(value, date) and not isinstance(value, datetime):
        return value.strftime(fmt)
    if isinstance(value, str) and _DATE_ONLY.fullmatch(value.strip()):
        return date.fromisoformat(value.strip()).strftime(fmt)
    moment = to_moment(value)
    if moment is None:
        raise TypeError(f"date: no date to format (got {value!r})")
    if tz:
        try:
            moment = moment.astimezone(ZoneInfo(tz))
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"date: unknown time zone {tz!r}") from None
    return moment.strftime(fmt)


_DICT_NAMES = frozenset(dir(dict))


class _TemplateEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox, with a shortcut for the common case of a template reading a plain dict.

    `profile.first_name` is `environment.getattr(profile, "first_name")`, which first tries
    the Python attribute and pays for an AttributeError (~1.5 µs) before reading the key. A
    plain dict has no attribute outside `dir(dict)` (no instance dict, no `__getattr__`), so
    for any other name the sandbox's answer is the key or, missing, an undefined: given here
    directly. Dict attribute names (`items`, `__class__`...) and every other type take the
    sandbox's own path.
    """

    def getattr(self, obj: Any, attribute: str) -> Any:
        if type(obj) is dict and attribute not in _DICT_NAMES:
            try:
                return obj[attribute]
            except KeyError:
                return self.undefined(obj=obj, name=attribute)
        return super().getattr(obj, attribute)


_ENV = _TemplateEnvironment(
    undefined=StrictUndefined,
    autoescape=False,
    keep_trailing_newline=False,  # the file's final newline is not part of the message
)
_ENV.filters["money"] = money
_ENV.filters["date"] = format_date


# --------------------------------------------------------------------------- compiled


@dataclass(frozen=True, slots=True)
class Rendered:
    """A rendered message; `subject` is None for channels (or templates) without one."""

    subject: str | None
    body: str


class _Part:
    """One compiled template text (a subject or a body) and where it sits in its file."""

    __slots__ = ("first_line", "label", "names", "source", "template")

    def __init__(
        self,
        template: Template,
        source: str,
        label: str,
        first_line: int,
        names: frozenset[str],
    ) -> None:
        self.template = template
        self.source = source
        self.label = label
        self.first_line = first_line  # line of the file where this text starts
        self.names = names  # the context names the text reads

    def render(self, ctx: Mapping[str, Any]) -> str:
        template = self.template
        try:
            # What `Template.render` does, less two dict copies and its exception hook: the
            # same root function over a context of the same names (globals, then `ctx`).
            context = Context(_ENV, {**_GLOBALS, **ctx}, template.name, template.blocks)
            return "".join(template.root_render_func(context))
        except Exception:
            pass
        try:
            # Rendering is deterministic: this fails the same way, through Jinja's hook that
            # rewrites the traceback to template lines (which `_explain` reads).
            return template.render(ctx)
        except Exception as exc:
            raise TemplateRenderError(self._explain(exc)) from exc

    def _explain(self, exc: Exception) -> str:
        line = _template_line(exc.__traceback__, self.label)
        where = self.label if line is None else f"{self.label}:{line + self.first_line - 1}"
        text = ""
        if line is not None:
            lines = self.source.splitlines()
            text = lines[line - 1].strip() if 0 < line <= len(lines) else ""
        if isinstance(exc, UndefinedError):
            detail = f"undefined variable {_undefined_name(exc.message or '', text)}"
        else:
            detail = f"{type(exc).__name__}: {exc}"
        snippet = f" (in: {text[:120]})" if text else ""
        return f"{where}: {detail}{snippet}"


def _undefined_name(message: str, text: str) -> str:
    """`'dict object' has no attribute 'x'` → `'profile.x'` when the line shows the path."""
    missing = re.fullmatch(r"'([^']+)' is undefined", message)
    if missing:
        return f"'{missing[1]}'"
    attribute = re.search(r"has no attribute '([^']+)'", message)
    if attribute:
        path = re.search(rf"([A-Za-z_][\w.]*)\.{re.escape(attribute[1])}(?!\w)", text)
        if path:
            return f"'{path[1]}.{attribute[1]}'"
    return f"({message})"


def _template_line(tb: TracebackType | None, label: str) -> int | None:
    # Jinja rewrites tracebacks so template frames carry the template's file name and line.
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == label:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


class CompiledTemplate:
    """A message template ready to render: an optional subject and a body."""

    __slots__ = ("_body", "_subject", "channel", "locale", "name", "names", "origin")

    def __init__(
        self,
        *,
        name: str,
        channel: str | None,
        locale: str | None,
        origin: str,
        subject: _Part | None,
        body: _Part,
    ) -> None:
        self.name = name
        self.channel = channel
        self.locale = locale
        self.origin = origin
        self._subject = subject
        self._body = body
        # The context names subject and body read: a caller can skip building the others
        # (the unsubscribe link is an HMAC). Undeclared variables are all a template can see.
        self.names = body.names | (subject.names if subject is not None else frozenset())

    @property
    def has_subject(self) -> bool:
        return self._subject is not None

    def render(self, ctx: Mapping[str, Any]) -> Rendered:
        """Render subject and body; any failure raises TemplateRenderError naming the line."""
        subject = None
        if self._subject is not None:
            # A subject is one header line: newlines from data must not leak into it.
            subject = self._subject.render(ctx)
            if "\n" in subject or "\r" in subject:
                subject = _NEWLINES.sub(" ", subject)
            subject = subject.strip()
        return Rendered(subject=subject, body=self._body.render(ctx))

    def __repr__(self) -> str:
        return f"CompiledTemplate({self.origin!r})"


# Templates get the environment's globals as a plain dict, not Jinja's default ChainMap:
# every render copies them (`dict(globals, **ctx)`, `set(globals)`), and iterating a ChainMap
# costs ~5 µs where a dict costs a fraction. The same names and values: `_ENV.globals` is
# never changed after this module is loaded.
_GLOBALS: dict[str, Any] = dict(_ENV.make_globals(None))
_NEWLINES = re.compile(r"\s*[\r\n]+\s*")


def _compile_part(source: str, label: str, first_line: int) -> _Part:
    """Compile one text; raises ExpressionError with a line relative to `source`."""
    try:
        ast = _ENV.parse(source, name=label, filename=label)
        _check(ast)
        code = _ENV.compile(ast, name=label, filename=label)
    except TemplateSyntaxError as exc:  # includes unknown filters and tests
        raise ExpressionError(exc.message or str(exc), exc.lineno or 1, 1) from None
    template = _ENV.template_class.from_code(_ENV, code, _GLOBALS)
    names = frozenset(meta.find_undeclared_variables(ast))
    return _Part(template, source, label, first_line, names)


def _check(ast: nodes.Template) -> None:
    # The sandbox refuses these at render time too; refusing at load time lets `validate` say so.
    for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
        name = node.attr if isinstance(node, nodes.Getattr) else None
        if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            name = node.arg.value if isinstance(node.arg.value, str) else None
        if name is not None and name.startswith("__"):
            raise TemplateSyntaxError(f"access to '{name}' is not allowed", node.lineno)


def compile_inline(subject: str | None, body: str, *, origin: str) -> CompiledTemplate:
    """A `send` step's inline template. Raises ExpressionError (line within body or subject).

    `origin` names the step for error messages, e.g. `rules/journeys/cart.yaml steps.1`.
    Cached by (subject, body, origin), so calling it at send time compiles only once.
    """
    key = (subject, body, origin)
    found = _INLINE.get(key)
    if found is None:
        if len(_INLINE) >= 10_000:  # rules are finite; this only guards misuse
            _INLINE.clear()
        found = _INLINE[key] = _compile_inline(subject, body, origin)
    return found


_INLINE: dict[tuple[str | None, str, str], CompiledTemplate] = {}


def _compile_inline(subject: str | None, body: str, origin: str) -> CompiledTemplate:
    subject_part = None
    if subject is not None:
        try:
            subject_part = _compile_part(subject, f"{origin} subject", 1)
        except ExpressionError as exc:
            raise ExpressionError(f"in subject: {exc.message}", exc.line, exc.col) from None
    body_part = _compile_part(body, f"{origin} body", 1)
    return CompiledTemplate(
        name=origin,
        channel=None,
        locale=None,
        origin=origin,
        subject=subject_part,
        body=body_part,
    )


# --------------------------------------------------------------------------- files

_FILE_NAME = re.compile(
    r"(?P<name>[\w-]+)\.(?P<channel>[\w-]+)(?:\.(?P<locale>[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*))?"
    r"\.j2"
)
_SUBJECT = re.compile(r"subject:[ \t]*(.*)", re.IGNORECASE)


def _locale_key(locale: str) -> str:
    # zh_CN, zh-CN, ZH-cn and zh_CN.UTF-8 are the same locale.
    return re.split(r"[.@]", locale.strip(), maxsplit=1)[0].replace("_", "-").lower()


def _fallbacks(locale: str | None) -> list[str]:
    """`zh-CN` → ['zh-cn', 'zh', '']: the locale, its shorter prefixes, then the plain file."""
    if not locale:
        return [""]
    parts = [p for p in _locale_key(locale).split("-") if p]
    return ["-".join(parts[:i]) for i in range(len(parts), 0, -1)] + [""]


class TemplateStore:
    """Every file template, compiled once, looked up by (name, channel) and locale."""

    def __init__(self) -> None:
        self._templates: dict[tuple[str, str], dict[str, CompiledTemplate]] = {}
        self._resolved: dict[tuple[str, str, str | None], CompiledTemplate] = {}
        self.problems: list[Problem] = []

    @classmethod
    def empty(cls) -> TemplateStore:
        return cls()

    @classmethod
    def load(cls, directory: Path) -> TemplateStore:
        """Compile every `*.j2` file; problems are collected in `.problems`, never raised."""
        store = cls()
        if not directory.is_dir():
            return store
        for path in sorted(directory.iterdir()):
            if path.name.startswith(".") or not path.name.endswith(".j2") or not path.is_file():
                continue
            store._load_file(path)
        return store

    def _load_file(self, path: Path) -> None:
        where = str(path)
        match = _FILE_NAME.fullmatch(path.name)
        if match is None:
            self.problems.append(
                Problem(
                    where,
                    1,
                    1,
                    (
                        "template file names are NAME.CHANNEL.j2 or NAME.CHANNEL.LOCALE.j2, "
                        "e.g. cart_reminder.email.j2 or cart_reminder.email.zh-CN.j2"
                    ),
                )
            )
            return
        name, channel, locale = match["name"], match["channel"], match["locale"]
        key = _locale_key(locale) if locale else ""
        self._resolved.clear()
        variants = self._templates.setdefault((name, channel), {})
        if key in variants:
            self.problems.append(
                Problem(
                    where,
                    1,
                    1,
                    f"duplicate template: same name, channel and locale as {variants[key].origin}",
                )
            )
            return
        try:
            text = path.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            self.problems.append(Problem(where, 1, 1, f"not valid UTF-8 ({exc.reason})"))
            return
        except OSError as exc:
            self.problems.append(Problem(where, 1, 1, f"cannot read: {exc.strerror}"))
            return
        try:
            variants[key] = _compile_file(text, name, channel, locale, where)
        except _FileError as exc:
            self.problems.append(Problem(where, exc.line, 1, exc.message))

    def has(self, name: str, channel: str) -> bool:
        return (name, channel) in self._templates and bool(self._templates[(name, channel)])

    def names(self) -> set[tuple[str, str]]:
        return {key for key, variants in self._templates.items() if variants}

    def resolve(self, name: str, channel: str, locale: str | None) -> CompiledTemplate:
        """The best variant for the locale: `zh-CN`, then `zh`, then the plain file.

        Memoised per (name, channel, locale): every send resolves, and the fallback chain
        costs a few regex passes. Only successes are kept; the store does not change after
        loading."""
        if locale is not None and type(locale) is not str:  # profile data: not assumed hashable
            return self._resolve(name, channel, locale)
        key = (name, channel, locale)
        found = self._resolved.get(key)
        if found is None:
            found = self._resolve(name, channel, locale)
            if len(self._resolved) >= 4096:  # locales come from profiles: stay bounded
                self._resolved.clear()
            self._resolved[key] = found
        return found

    def _resolve(self, name: str, channel: str, locale: str | None) -> CompiledTemplate:
        variants = self._templates.get((name, channel))
        if variants:
            for key in _fallbacks(locale):
                found = variants.get(key)
                if found is not None:
                    return found
            raise TemplateRenderError(
                f"template '{name}' for channel '{channel}' has no variant for locale "
                f"{locale!r} and no plain {name}.{channel}.j2"
            )
        raise TemplateRenderError(f"no template '{name}' for channel '{channel}'")


class _FileError(Exception):
    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


def _compile_file(
    text: str, name: str, channel: str, locale: str | None, where: str
) -> CompiledTemplate:
    subject_part = None
    body, body_line = text, 1
    if channel == "email":
        first, newline, rest = text.partition("\n")
        match = _SUBJECT.fullmatch(first.rstrip("\r"))
        if match is not None:
            try:
                subject_part = _compile_part(match[1].strip(), where, 1)
            except ExpressionError as exc:
                raise _FileError(f"in subject: {exc.message}", 1) from None
            body, body_line = rest, 2
            blank, newline, after = body.partition("\n")
            if newline and not blank.strip():
                body, body_line = after, 3
    try:
        # Subject and body share the file's name as label so errors point into the file.
        body_part = _compile_part(body, where, body_line)
    except ExpressionError as exc:
        raise _FileError(exc.message, exc.line + body_line - 1) from None
    return CompiledTemplate(
        name=name,
        channel=channel,
        locale=locale,
        origin=where,
        subject=subject_part,
        body=body_part,
    )


# --------------------------------------------------------------------------- values

_VALUES: dict[str, _Part] = {}


def _looks_templated(text: str) -> bool:
    return "{{" in text or "{%" in text


def _value_part(source: str) -> _Part:
    part = _VALUES.get(source)
    if part is None:
        if len(_VALUES) >= 10_000:  # rules are finite; this only guards misuse
            _VALUES.clear()
        part = _VALUES[source] = _compile_part(source, "value template", 1)
    return part


def render_value(value: Any, ctx: Mapping[str, Any]) -> Any:
    """Render `update_profile` values and webhook bodies that are templates.

    A string containing `{{` or `{%` is rendered (strictly) and returned as a string; any other
    value is returned unchanged. Dicts and lists are rendered item by item, so a webhook body
    `{order: "{{ event.properties.order_id }}"}` works. Pass values from the rules only, never
    event or profile data: a user's text containing `{{` must not be executed as a template.
    """
    if isinstance(value, str):
        if not _looks_templated(value):
            return value
        try:
            part = _value_part(value)
        except ExpressionError as exc:
            raise TemplateRenderError(f"{value!r}: {exc.message}") from None
        return part.render(ctx)
    if isinstance(value, dict):
        return {key: render_value(item, ctx) for key, item in value.items()}
    if isinstance(value, list):
        return [render_value(item, ctx) for item in value]
    return value


def value_names(value: Any) -> frozenset[str] | None:
    """The context names the template strings inside `value` read (see `render_value`);
    None when one of them does not compile (rendering reports that, with every name there)."""
    if isinstance(value, str):
        if not _looks_templated(value):
            return frozenset()
        try:
            return _value_part(value).names
        except ExpressionError:
            return None
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    names: frozenset[str] = frozenset()
    for item in items:
        found = value_names(item)
        if found is None:
            return None
        names |= found
    return names


def check_value(value: Any) -> None:
    """Compile every template string in `value` now, so a loader reports syntax errors early.

    Raises ExpressionError (line within the offending string).
    """
    if isinstance(value, str):
        if _looks_templated(value):
            _value_part(value)
    elif isinstance(value, dict):
        for item in value.values():
            check_value(item)
    elif isinstance(value, list):
        for item in value:
            check_value(item)
