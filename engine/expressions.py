"""Conditions: Jinja2 expressions compiled once, evaluated on the hot path in a sandbox.

Why a custom environment: the contract says a missing attribute is `none`, never an exception,
so `environment.getattr`/`getitem` are overridden to read plain dicts as data (`profile.foo`,
`profile['foo']` and `profile.foo.bar` are all `None` when `foo` is missing). Values are not
wrapped or copied, so lists stay lists (`'vip' in profile.tags`) and evaluation stays cheap.

Why two evaluators: most conditions are tiny (`event.properties.value >= 50`), and running
them through Jinja costs a render `Context` and sandbox dispatch per check. `engine.fastexpr`
compiles the same parse tree into plain closures when the expression stays inside a subset it
reproduces exactly (0.2–0.3 µs against 1–2 µs here, 6 µs for a `str` method call); anything
else, and any value the closures do not handle exactly, is evaluated by Jinja, which remains
the reference (`Condition.jinja_only()`; `tests/unit/test_fastexpr.py` compares the two).

Why a hand-made render context on the Jinja path: Jinja's `TemplateExpression.__call__`
copies the globals and builds a full `Context` per call (~4 µs). `Condition` runs the same
compiled code against a minimal `Context` whose parent is the caller's dict (see
`_new_context`):

    >>> import timeit; from datetime import UTC, datetime
    >>> c = compile_condition("event.properties.value >= 50 and profile.country in ['CN', 'US']")
    >>> ctx = build_context(now=datetime.now(UTC), event={"properties": {"value": 60}},
    ...                     profile={"country": "CN"}, journey=None)
    >>> timeit.timeit(lambda: c.test(ctx), number=100_000) * 10  # µs per call  # doctest: +SKIP
    >>> j = c.jinja_only()
    >>> timeit.timeit(lambda: j.test(ctx), number=100_000) * 10  # doctest: +SKIP

Times: profile timestamps usually arrive as ISO strings. `now` and the helpers `ago` and `datetime`
are `Moment`s, an aware datetime that also orders against ISO strings and epoch seconds, so
`profile.last_seen < ago('7d')` works; `days_since(ts)` and `within(ts, '30m')` accept a
datetime, an ISO-8601 string or epoch seconds and are the clearest way to write such tests.
"""

from __future__ import annotations

import difflib
import itertools
import re
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, date, timedelta
from datetime import datetime as _datetime
from types import FunctionType as _FunctionType
from typing import Any, Self

from jinja2 import nodes, pass_context
from jinja2.exceptions import SecurityError, TemplateSyntaxError
from jinja2.lexer import TOKEN_EOF, Token, TokenStream, describe_token, ignored_tokens
from jinja2.parser import Parser
from jinja2.runtime import Context, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

from engine.durations import parse_duration
from engine.errors import ExpressionError, TemplateRenderError

__all__ = [
    "CONDITION_NAMES",
    "Condition",
    "Moment",
    "NeedsJinja",
    "ValueExpr",
    "build_context",
    "clock_context",
    "compile_condition",
    "compile_expression_value",
    "to_moment",
]


# --------------------------------------------------------------------------- times


class Moment(_datetime):
    """An aware datetime that orders against ISO-8601 strings and epoch seconds too.

    Profiles hold timestamps as JSON strings; this lets `profile.last_seen < ago('7d')` mean
    what the marketer expects instead of failing with a TypeError. Equality is unchanged.
    """

    __slots__ = ()

    def __lt__(self, other: object) -> bool:
        o = _comparable(other)
        return NotImplemented if o is None else _datetime.__lt__(self, o)

    def __le__(self, other: object) -> bool:
        o = _comparable(other)
        return NotImplemented if o is None else _datetime.__le__(self, o)

    def __gt__(self, other: object) -> bool:
        o = _comparable(other)
        return NotImplemented if o is None else _datetime.__gt__(self, o)

    def __ge__(self, other: object) -> bool:
        o = _comparable(other)
        return NotImplemented if o is None else _datetime.__ge__(self, o)


def _comparable(other: object) -> _datetime | None:
    try:
        return _aware(other)
    except ValueError:
        return None


# Parsed ISO strings: one event re-tests the same profile timestamps in several segments, and
# `fromisoformat` costs up to ~1 µs (a date-only string). Values are immutable; bounded.
_PARSED: dict[str, _datetime] = {}
_PARSED_LIMIT = 4096


def _aware(ts: Any) -> _datetime | None:
    # Plain datetimes on purpose: building a datetime subclass costs several times more.
    if ts is None:
        return None
    if isinstance(ts, _datetime):
        return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)
    if isinstance(ts, str):
        known = _PARSED.get(ts) if type(ts) is str else None
        if known is not None:
            return known
        text = ts.strip()
        if not text:
            return None
        try:
            parsed = _datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"not a timestamp: {ts!r} (use ISO 8601)") from None
        aware = parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
        if type(ts) is str:
            if len(_PARSED) >= _PARSED_LIMIT:
                _PARSED.clear()
            _PARSED[ts] = aware
        return aware
    if isinstance(ts, int | float) and not isinstance(ts, bool):
        try:
            return _datetime.fromtimestamp(ts, UTC)
        except (OverflowError, OSError, ValueError):
            raise ValueError(f"not a timestamp: {ts!r} (out of range)") from None
    if isinstance(ts, date):
        return _datetime(ts.year, ts.month, ts.day, tzinfo=UTC)
    raise ValueError(f"not a timestamp: {ts!r}")


def _as_moment(dt: _datetime) -> Moment:
    if type(dt) is Moment:
        return dt
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return Moment(
        dt.year,
        dt.month,
        dt.day,
        dt.hour,
        dt.minute,
        dt.second,
        dt.microsecond,
        dt.tzinfo,
        fold=dt.fold,
    )


def to_moment(ts: Any) -> Moment | None:
    """Read a timestamp as profiles and events carry it; naive values are taken as UTC.

    Accepts a datetime, a date (midnight UTC), an ISO-8601 string (`Z` allowed) or epoch
    seconds. `None` and `''` give None; anything else raises ValueError.
    """
    aware = _aware(ts)
    return None if aware is None else _as_moment(aware)


def _now_in(lookup: Callable[[str], Any]) -> _datetime | None:
    # build_context stores the caller's `now` under `_now` (a name conditions cannot spell),
    # so helpers do arithmetic on a plain datetime rather than on the slower `Moment`.
    # `lookup` is `Context.resolve_or_missing` on the Jinja path and `dict.get` on the fast one.
    now = lookup("_now")
    if not isinstance(now, _datetime):
        now = lookup("now")
        if not isinstance(now, _datetime):
            return None
    return now if now.tzinfo is not None else now.replace(tzinfo=UTC)


def _required(now: _datetime | None) -> _datetime:
    # Raised only when a helper actually needs the clock, so `days_since(none)` stays None
    # in a context without `now`, as it always has.
    if now is None:
        raise ValueError("the context has no 'now'")
    return now


# The helpers proper take `now` (None when the context has none) so that both evaluation
# paths share them; the `pass_context` wrappers below are what Jinja calls.


def _ago_at(now: _datetime | None, duration: str) -> Moment:
    return _as_moment(_required(now) - parse_duration(duration))


def _days_since_at(now: _datetime | None, ts: Any) -> float | None:
    moment = _aware(ts)
    if moment is None:
        return None
    return (_required(now) - moment) / _DAY


def _within_at(now: _datetime | None, ts: Any, duration: str) -> bool:
    moment = _aware(ts)
    if moment is None:
        return False
    return _required(now) - moment <= parse_duration(duration)


@pass_context
def _ago(context: Context, duration: str) -> Moment:
    return _ago_at(_now_in(context.resolve_or_missing), duration)


@pass_context
def _days_since(context: Context, ts: Any) -> float | None:
    return _days_since_at(_now_in(context.resolve_or_missing), ts)


@pass_context
def _within(context: Context, ts: Any, duration: str) -> bool:
    return _within_at(_now_in(context.resolve_or_missing), ts, duration)


@pass_context
def _to_datetime(context: Context, ts: Any) -> Moment | None:
    return to_moment(ts)


_DAY = timedelta(days=1)
_HELPERS: dict[str, Any] = {
    "ago": _ago,
    "days_since": _days_since,
    "within": _within,
    "datetime": _to_datetime,
}
_TRUSTED_CALLS: frozenset[Any] = frozenset(_HELPERS.values())

CONDITION_NAMES: frozenset[str] = frozenset({"event", "profile", "journey", "now", *_HELPERS})
"""Every name a condition may use; anything else is a compile error with a did-you-mean."""


# --------------------------------------------------------------------------- environment


def _default(value: Any, default_value: Any = "", boolean: bool = False) -> Any:
    # Missing attributes are None here, so `| default(x)` must treat None as missing too.
    if value is None or isinstance(value, Undefined) or (boolean and not value):
        return default_value
    return value


class _ConditionEnvironment(ImmutableSandboxedEnvironment):
    """Sandbox where a dict's attributes are its keys and anything missing is None."""

    def getattr(self, obj: Any, attribute: str) -> Any:
        if type(obj) is dict:  # the hot path: profile / event / journey data
            return obj.get(attribute)
        if obj is None:
            return None
        if isinstance(obj, Mapping):
            try:
                return obj[attribute]
            except (KeyError, TypeError):
                return None
        return self._checked(super().getattr(obj, attribute))

    def getitem(self, obj: Any, argument: Any) -> Any:
        if type(obj) is dict:
            try:
                return obj.get(argument)
            except TypeError:  # unhashable key
                return None
        if obj is None:
            return None
        return self._checked(super().getitem(obj, argument))

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        # Jinja's generic call path probes several attributes on every callee (~2 µs);
        # our own helpers are known safe and always take the context.
        if type(obj) is _FunctionType and obj in _TRUSTED_CALLS:
            return obj(context, *args, **kwargs)
        return super().call(context, obj, *args, **kwargs)

    @staticmethod
    def _checked(value: Any) -> Any:
        if isinstance(value, Undefined):
            if value._undefined_exception is SecurityError:
                value._fail_with_undefined_error()
            return None
        return value


_ENV = _ConditionEnvironment()
_ENV.globals.clear()  # names come from the context only (see CONDITION_NAMES)
_ENV.filters["default"] = _default
_ENV.filters["d"] = _default

_Root = Callable[[Context], Iterator[str]]


class _FastContext(Context):
    """A `Context` built without copying globals or blocks; expressions need neither."""

    def __init__(self, parent: Any) -> None:  # deliberately does not call super().__init__
        self.parent = parent
        self.vars = {}
        self.environment = _ENV
        self.eval_ctx = _EVAL_CTX
        self.exported_vars = set()
        self.name = None
        self.globals_keys = set()
        self.blocks = {}


_EVAL_CTX = nodes.EvalContext(_ENV)


def _slow_context(parent: Any) -> Context:
    return Context(_ENV, parent, None, {})


# If a future Jinja adds state to Context, fall back to the regular constructor rather than
# run conditions against a half-initialised object.
_new_context: Callable[[Any], Context] = (
    _FastContext if set(vars(_FastContext({}))) == set(vars(_slow_context({}))) else _slow_context
)


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 200 else text[:197] + "..."


def _parent(ctx: Mapping[str, Any]) -> Mapping[str, Any]:
    # build_context already includes the helpers; a hand-made dict gets them added.
    return ctx if "days_since" in ctx else {**_HELPERS, **ctx}


# --------------------------------------------------------------------------- public API


class NeedsJinja(Exception):
    """Raised by a fast evaluator when a value falls outside what it reproduces exactly.

    Not a HeraldError: it never leaves this module and `engine.fastexpr`. The evaluation is then
    redone by Jinja, which is safe because the fast path has no side effects.
    """


_Fast = Callable[[Mapping[str, Any]], Any]
_TRUE: tuple[bool, None] = (True, None)
_FALSE: tuple[bool, None] = (False, None)


class _Compiled:
    """An expression compiled twice: by Jinja (the reference) and, when it stays inside the
    subset `engine.fastexpr` reproduces exactly, to a closure tried first."""

    __slots__ = ("_fast", "_root", "event_time", "names", "source")

    def __init__(
        self,
        source: str,
        root: _Root,
        fast: _Fast | None = None,
        names: frozenset[str] = CONDITION_NAMES,
        event_time: bool = True,
    ) -> None:
        self.source = source
        self._root = root
        self._fast = fast
        # The context names the expression reads: a caller may leave out every other name
        # (the compiled code, Jinja's or the closure, resolves no name it does not contain).
        self.names = names
        # Whether it may read `event.timestamp` (or the event as a whole): formatting the
        # instant is most of the cost of an event's context, and most conditions read only
        # `event.properties`.
        self.event_time = event_time

    @property
    def uses_fast_path(self) -> bool:
        """Whether evaluation tries the compiled closure before Jinja."""
        return self._fast is not None

    def jinja_only(self) -> Self:
        """The same expression evaluated by Jinja alone: the reference the fast path matches."""
        return type(self)(self.source, self._root, None, self.names, self.event_time)


class Condition(_Compiled):
    """A compiled condition; `test` never raises.

    `fast` is the closure built by `engine.fastexpr` when the expression stays inside the
    subset it reproduces exactly; Jinja evaluates everything else, and whatever the fast path
    hands back (`NeedsJinja`).
    """

    __slots__ = ()

    def test(self, ctx: Mapping[str, Any]) -> tuple[bool, str | None]:
        """(truthiness of the value, None) or (False, short error) for a run-time failure.

        The error string is meant to be counted and logged; the caller decides, the condition
        just reports.
        """
        fast = self._fast
        if fast is not None and type(ctx) is dict:  # other mappings: Jinja's lookup rules
            try:
                return _TRUE if fast(ctx) else _FALSE
            except NeedsJinja:
                pass
            except Exception as exc:
                return False, _describe(exc)
        try:
            context = _new_context(ctx if "days_since" in ctx else {**_HELPERS, **ctx})
            for _ in self._root(context):
                pass
            return bool(context.vars["result"]), None
        except Exception as exc:
            return False, _describe(exc)

    def __repr__(self) -> str:
        return f"Condition({self.source!r})"


class ValueExpr(_Compiled):
    """A compiled expression evaluated for its value (None when undefined)."""

    __slots__ = ()

    def eval(self, ctx: Mapping[str, Any]) -> Any:
        """The value; raises TemplateRenderError so a failure is recorded, not swallowed."""
        fast = self._fast
        try:
            if fast is not None and type(ctx) is dict:
                try:
                    value = fast(ctx)
                except NeedsJinja:
                    pass
                else:
                    return None if isinstance(value, Undefined) else value
            context = _new_context(_parent(ctx))
            for _ in self._root(context):
                pass
        except Exception as exc:
            message = f"expression {self.source!r} failed: {_describe(exc)}"
            raise TemplateRenderError(message) from exc
        value = context.vars["result"]
        return None if isinstance(value, Undefined) else value

    def __repr__(self) -> str:
        return f"ValueExpr({self.source!r})"


_CACHE_LIMIT = 10_000
_CONDITIONS: dict[str, Condition] = {}
_VALUES: dict[str, ValueExpr] = {}


def compile_condition(source: str) -> Condition:
    """Compile once (cached by source); raises ExpressionError with a line and column."""
    found = _CONDITIONS.get(source)
    if found is None:
        if len(_CONDITIONS) >= _CACHE_LIMIT:  # rules are finite; this only guards misuse
            _CONDITIONS.clear()
        found = _CONDITIONS[source] = Condition(source, *_compile(source))
    return found


def compile_expression_value(source: str) -> ValueExpr:
    """Like `compile_condition`, for expressions read for their value."""
    found = _VALUES.get(source)
    if found is None:
        if len(_VALUES) >= _CACHE_LIMIT:
            _VALUES.clear()
        found = _VALUES[source] = ValueExpr(source, *_compile(source))
    return found


def build_context(
    *,
    now: _datetime,
    event: Mapping[str, Any] | None,
    profile: Mapping[str, Any],
    journey: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The names a condition sees. Nothing is copied: build it once per event and user.

    `profile.tags` defaults to an empty list so `'vip' not in profile.tags` holds for a
    profile that has no tags yet instead of failing on `None`.
    """
    if "tags" not in profile:
        profile = {**profile, "tags": []}
    return {"event": event, "profile": profile, "journey": journey, **clock_context(now)}


def clock_context(now: _datetime, *, moment: bool = True) -> dict[str, Any]:
    """The part of `build_context` that depends on the clock alone: `now` and the helpers.

    Enough for an expression that reads none of `event`, `profile` and `journey` (see
    `Condition.names`): a caller can then skip building those. `moment=False` leaves out
    `now` itself, for an expression that does not name it: the helpers compute with `_now`,
    and a `Moment` costs ~1.5 µs to build.
    """
    if now.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    if not moment:
        return {"_now": now, **_HELPERS}
    return {"now": _as_moment(now), "_now": now, **_HELPERS}


# --------------------------------------------------------------------------- compiling


def _compile(source: str) -> tuple[_Root, _Fast | None, frozenset[str], bool]:
    """Jinja's compiled root, the fast closure when the expression allows one, the names the
    expression reads, and whether it may read the event's timestamp."""
    from engine.fastexpr import compile_node  # fastexpr builds on this module

    expr = _parse_checked(source)
    fast = compile_node(expr)
    names = frozenset(
        n.name
        for n in itertools.chain([expr], expr.find_all(nodes.Name))
        if isinstance(n, nodes.Name)
    )
    body = [nodes.Assign(nodes.Name("result", "store"), expr, lineno=1)]
    try:
        template = _ENV.from_string(nodes.Template(body, lineno=1))
    except TemplateSyntaxError as exc:  # includes TemplateAssertionError (unknown filter/test)
        message = exc.message or str(exc)
        quoted = re.search(r"'([^']+)'", message)
        offset = _find(source, quoted.group(1)) if quoted else None
        line, col = _locate(source, offset, exc.lineno)
        raise ExpressionError(message, line, col) from None
    return template.root_render_func, fast, names, _reads_event_time(expr)


def _reads_event_time(expr: nodes.Expr) -> bool:
    """False only when every use of `event` is `event.<key>` / `event['key']` with a key
    other than `timestamp`: then the context may leave the timestamp out."""
    keyed: set[int] = set()
    for node in itertools.chain([expr], expr.find_all((nodes.Getattr, nodes.Getitem))):
        base = getattr(node, "node", None)
        if not (isinstance(base, nodes.Name) and base.name == "event"):
            continue
        if isinstance(node, nodes.Getattr):
            key: Any = node.attr
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            key = node.arg.value
        else:
            return True
        if key == "timestamp":
            return True
        keyed.add(id(base))
    return any(
        isinstance(n, nodes.Name) and n.name == "event" and id(n) not in keyed
        for n in itertools.chain([expr], expr.find_all(nodes.Name))
    )


def _parse_checked(source: str) -> nodes.Expr:
    """The expression's tree, after the checks every path relies on (names, dunders)."""
    if not isinstance(source, str):
        raise ExpressionError(f"expected an expression string, got {type(source).__name__}")
    if not source.strip():
        raise ExpressionError("empty expression")
    expr = _parse(source)
    _check(source, expr)
    return expr


def _parse(source: str) -> nodes.Expr:
    """Parse with token offsets recorded, so a syntax error can point at its column."""
    lexer = _ENV.lexer
    offsets: list[int] = []  # start offset of every significant token, in stream order
    end = [0]  # end offset of the last raw token lexed
    pulled = [0]  # significant tokens handed to the parser
    lex_failed = [False]

    def raw() -> Iterator[tuple[int, str, str]]:
        try:
            for lineno, token, value in lexer.tokeniter(source, None, None, "variable"):
                if token not in ignored_tokens:
                    offsets.append(end[0])
                end[0] += len(value)
                yield lineno, token, value
        except TemplateSyntaxError:
            lex_failed[0] = True
            raise

    def counted(tokens: Iterator[Token]) -> Iterator[Token]:
        for token in tokens:
            pulled[0] += 1
            yield token

    parser = Parser(_ENV, "", state="variable")
    try:
        parser.stream = TokenStream(counted(lexer.wrap(raw(), None, None)), None, None)
        expr = parser.parse_expression()
        if not parser.stream.eos:
            raise TemplateSyntaxError(
                f"unexpected {describe_token(parser.stream.current)} after the expression",
                parser.stream.current.lineno,
            )
    except TemplateSyntaxError as exc:
        message = (exc.message or str(exc)).replace("'end of template'", "end of expression")
        if lex_failed[0]:  # the lexer stopped where the last token ended
            offset: int | None = end[0]
            message = re.sub(r" at \d+$", "", message)
        else:
            stream = parser.stream
            index = pulled[0] - 1 - len(stream._pushed)
            if stream.current.type == TOKEN_EOF:
                offset = len(source.rstrip())
            else:
                offset = offsets[index] if 0 <= index < len(offsets) else None
        line, col = _locate(source, offset, exc.lineno)
        raise ExpressionError(message, line, col) from None
    return expr


def _check(source: str, expr: nodes.Expr) -> None:
    """Refuse what can only fail at run time: unknown names, dunders, bad duration literals."""
    kinds = (nodes.Name, nodes.Getattr, nodes.Getitem, nodes.Call)
    for node in itertools.chain([expr], expr.find_all(kinds)):
        if isinstance(node, nodes.Name) and node.name not in CONDITION_NAMES:
            close = difflib.get_close_matches(node.name, sorted(CONDITION_NAMES), n=1)
            hint = (
                f"; did you mean '{close[0]}'?"
                if close
                else (f"; available: {', '.join(sorted(CONDITION_NAMES))}")
            )
            line, col = _locate(source, _find(source, node.name, attribute=False))
            raise ExpressionError(f"unknown name '{node.name}'{hint}", line, col)
        name = None
        if isinstance(node, nodes.Getattr):
            name = node.attr
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            name = node.arg.value if isinstance(node.arg.value, str) else None
        if name is not None and name.startswith("__"):
            line, col = _locate(source, _find(source, name))
            raise ExpressionError(f"access to '{name}' is not allowed", line, col)
        if (
            isinstance(node, nodes.Call)
            and isinstance(node.node, nodes.Name)
            and node.node.name in ("ago", "within")
        ):
            position = 0 if node.node.name == "ago" else 1
            argument = node.args[position] if len(node.args) > position else None
            if isinstance(argument, nodes.Const):
                literal = argument.value
                try:
                    parse_duration(literal)
                except ValueError as exc:
                    line, col = _locate(source, _find(source, str(literal)))
                    raise ExpressionError(str(exc), line, col) from None


def _find(source: str, word: str, *, attribute: bool | None = None) -> int | None:
    """Best-effort offset of `word` in the source, for error columns."""
    pattern = re.escape(word)
    if attribute is False:
        pattern = rf"(?<![\w.]){pattern}(?!\w)"
    elif re.fullmatch(r"\w+", word):
        pattern = rf"(?<!\w){pattern}(?!\w)"
    match = re.search(pattern, source)
    return match.start() if match else None


def _locate(source: str, offset: int | None, lineno: int = 1) -> tuple[int, int]:
    """(line, col), both 1-based, for an offset; column 1 of `lineno` when unknown."""
    if offset is None:
        return lineno, 1
    line = source.count("\n", 0, offset) + 1
    col = offset - (source.rfind("\n", 0, offset) + 1) + 1
    return line, col
