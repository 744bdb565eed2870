"""The fast evaluator must agree with Jinja's path on every expression and context.

Both paths are reached through the public objects: `compile_condition(s)` tries the fast
closure first, `.jinja_only()` is the same condition evaluated by Jinja alone.
"""

from __future__ import annotations

import math
import timeit
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import ExpressionError, TemplateRenderError
from engine.expressions import (
    build_context,
    clock_context,
    compile_condition,
    compile_expression_value,
)
from engine.fastexpr import NeedsJinja, compile_fast

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


class Metrics(Mapping[str, Any]):
    """A mapping that is not a dict, like the runtime's lazily computed metrics."""

    def __init__(self, **values: Any) -> None:
        self._values = values

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


FULL_PROFILE: dict[str, Any] = {
    "country": "CN",
    "tier": "vip",
    "tags": ["vip", "newsletter"],
    "last_seen": "2026-04-20T00:00:00Z",
    "signup_epoch": (NOW - timedelta(days=2)).timestamp(),
    "metrics": {"purchases_180d": 6, "spend_180d": 3000.0, "last_purchase_at": "2026-04-25"},
    "email": "ada@example.com",
    "name": "  Ada Lovelace ",
    "lead_score": 70,
    "score_text": "42",
    "age": None,
    "flag": True,
    "zero": 0,
    "empty": "",
    "nested": {"a": {"b": {"c": 1}}, "list": [1, 2, 3]},
    "orders": [{"id": 1, "total": 10.5}, {"id": 2, "total": 99}],
}
FULL_EVENT: dict[str, Any] = {
    "type": "cart_add",
    "user_id": "u1",
    "timestamp": "2026-05-01T11:45:00+00:00",
    "properties": {"value": 60, "path": "/pricing/pro", "items": ["sku1"], "price": 9.5},
}
JOURNEY: dict[str, Any] = {"id": "cart", "entered_at": "2026-05-01T11:00:00Z", "variant": "A"}

WRONG_PROFILE: dict[str, Any] = {
    "country": 5,
    "tier": ["vip"],
    "tags": None,
    "last_seen": "yesterday",
    "signup_epoch": "not a number",
    "metrics": [1, 2],
    "email": None,
    "name": 12,
    "lead_score": "high",
    "score_text": "x",
    "nested": "flat",
    "orders": {"id": 1},
}
WRONG_EVENT: dict[str, Any] = {
    "type": None,
    "timestamp": 1_777_000_000,
    "properties": {"value": "60", "path": None, "items": "sku1", "price": None},
}
EPOCH_PROFILE: dict[str, Any] = {
    "country": "US",
    "tags": ("vip",),
    "last_seen": int((NOW - timedelta(days=3)).timestamp()),
    "signup_epoch": datetime(2026, 4, 1, 8, 0),  # naive: read as UTC
    "metrics": Metrics(purchases_180d=1, spend_180d=10, last_purchase_at=NOW - timedelta(days=40)),
    "email": "bob@shop.cn",
    "lead_score": 10,
    "nested": {"a": None},
}


def _hand_made(**extra: Any) -> dict[str, Any]:
    # Callers that skip build_context: no helpers in the dict, maybe no journey at all.
    return {"now": NOW, "profile": {"country": "FR", "tags": []}, "event": FULL_EVENT, **extra}


CONTEXTS: dict[str, dict[str, Any]] = {
    "full": build_context(now=NOW, event=FULL_EVENT, profile=FULL_PROFILE, journey=JOURNEY),
    "empty": build_context(now=NOW, event=None, profile={}, journey=None),
    "wrong_types": build_context(now=NOW, event=WRONG_EVENT, profile=WRONG_PROFILE, journey={}),
    "epochs_and_mappings": build_context(
        now=NOW, event={"properties": {}}, profile=EPOCH_PROFILE, journey=JOURNEY
    ),
    "hand_made": _hand_made(),
    "naive_now": {"now": datetime(2026, 5, 1, 12), "profile": FULL_PROFILE, "event": None},
    "no_now": {"profile": FULL_PROFILE, "event": FULL_EVENT, "journey": None},
}

# Every one of these compiles to a fast evaluator.
FAST_EXPRESSIONS = [
    # the typical conditions
    "event.properties.value >= 50",
    "'vip' in profile.tags",
    "'vip' not in profile.tags",
    "profile.country in ['CN', 'US']",
    "profile.country not in ('CN', 'US')",
    "(event.properties.path or '').startswith('/pricing')",
    "profile.metrics.last_purchase_at is not none"
    " and days_since(profile.metrics.last_purchase_at) <= 30",
    "(profile.lead_score or 0) >= 50",
    "not (profile.flag and profile.zero)",
    "profile.lead_score | default(0) > 3",
    "event.properties.value >= 50 and profile.country in ['CN', 'US']",
    # names, attributes, items
    "profile",
    "event",
    "journey",
    "now",
    "profile.foo",
    "profile.foo.bar.baz",
    "profile['country']",
    "profile['nested']['a']['b']['c']",
    "profile.nested.a.b.c",
    "profile.nested.list[1]",
    "profile.nested.list[-1]",
    "profile.nested.list[7]",
    "profile.tags[0]",
    "profile.tags.0",
    "profile.orders[1].total",
    "profile.orders[1]['total'] > 50",
    "profile.metrics.spend_180d",
    "profile.metrics['spend_180d']",
    "profile.metrics.nope",
    "profile.country[0]",
    "profile.email[0:3]",
    "profile.tags[1:]",
    "profile.email[::-1]",
    "profile.nested[profile.country]",
    "profile[profile.tags]",
    "event.properties[event.type]",
    "journey.variant == 'A'",
    "journey.id",
    "profile.nested.list[profile.zero]",
    # comparisons
    "profile.age >= 50",
    "event.properties.value > 'x'",
    "profile.lead_score == 70",
    "profile.lead_score != 70",
    "70 == profile.lead_score",
    "50 < profile.lead_score",
    "1 < profile.lead_score < 100",
    "0 <= profile.zero < 1 <= profile.lead_score",
    "profile.zero < profile.lead_score > 100",
    "'a' < profile.email <= 'z'",
    "profile.tags == ['vip', 'newsletter']",
    "profile.tags == ('vip', 'newsletter')",
    "['vip'] in profile.orders",
    "profile.email in 'xx ada@example.com xx'",
    "'vip' in profile.missing",
    "profile.last_seen < ago('7d')",
    "ago('7d') > profile.last_seen",
    "profile.signup_epoch > ago('3d')",
    "datetime(profile.last_seen) < now",
    "now > profile.last_seen",
    # boolean logic returns operands
    "profile.empty or profile.country",
    "profile.country and profile.tier",
    "profile.zero or profile.empty",
    "not profile.foo",
    "not not profile.tags",
    "profile.flag and not profile.zero or profile.age",
    # arithmetic
    "profile.lead_score + 1",
    "profile.lead_score - event.properties.value",
    "profile.lead_score * 2.5",
    "profile.lead_score / 4",
    "profile.lead_score // 4",
    "profile.lead_score % 7",
    "profile.lead_score ** 2",
    "-profile.lead_score",
    "+profile.lead_score",
    "profile.age + 1",
    "1 / profile.zero",
    "profile.tags + ['x']",
    "profile.email * 2",
    "'%s!' % profile.country",
    "profile.country ~ '-' ~ profile.lead_score",
    "(profile.metrics.spend_180d / (profile.metrics.purchases_180d or 1)) > 100",
    # literals
    "[1, 'a', none, profile.country]",
    "(1, 2)",
    "{'a': profile.country, 'b': [1]}",
    "{'a': 1}.a",
    "{'a': 1}['b']",
    "none",
    "true",
    "false",
    "1.5",
    # if-expressions
    "'y' if profile.flag else 'n'",
    "profile.lead_score if profile.lead_score is number else 0",
    # tests
    "profile.foo is none",
    "profile.age is not none",
    "profile.foo is defined",
    "profile.foo is undefined",
    "profile.lead_score is number",
    "profile.country is string",
    "profile.tags is mapping",
    "profile.flag is true",
    "profile.flag is false",
    "profile.flag is boolean",
    "profile.lead_score is integer",
    "profile.lead_score is divisibleby 7",
    "profile.lead_score is divisibleby(3)",
    "profile.lead_score is odd",
    "profile.lead_score is even",
    "profile.country is in ['CN', 'US']",
    "profile.country is eq 'CN'",
    "profile.lead_score is gt 50",
    "profile.lead_score is lessthan 50",
    "profile.country is lower",
    "profile.country is upper",
    "profile.foo is sameas none",
    # filters
    "profile.foo | default(3)",
    "profile.foo | d('x')",
    "profile.empty | default('x', true)",
    "profile.empty | default('x', boolean=true)",
    "profile.foo | default([1])",
    "profile.country | default('US')",
    "profile.tags | length",
    "profile.tags | count",
    "profile.foo | length",
    "profile.country | lower == 'cn'",
    "profile.country | upper",
    "profile.score_text | int > 40",
    "profile.score_text | int(7)",
    "profile.score_text | float",
    "profile.metrics.spend_180d | round",
    "(profile.lead_score / 3) | round(2)",
    "(profile.lead_score / 3) | round(1, 'floor')",
    "profile.lead_score | round(1, 'sideways')",
    "-profile.lead_score | abs",
    "profile.lead_score | string",
    "profile.name | trim",
    "profile.name | title",
    "profile.name | capitalize",
    "profile.name | wordcount",
    "profile.tags | lower",
    # helpers
    "days_since(profile.last_seen)",
    "days_since(profile.signup_epoch) < 3",
    "days_since(profile.nothing)",
    "days_since(profile.country) > 1",
    "days_since('2026-04-30')",
    "within(profile.last_seen, '30d')",
    "within(event.timestamp, '15m')",
    "within(profile.nothing, '7d')",
    "within(profile.last_seen, profile.tier)",
    "ago('30m')",
    "profile.last_seen < ago(profile.tier)",
    "datetime(profile.last_seen)",
    "datetime(profile.signup_epoch)",
    "datetime(profile.nothing)",
    "days_since",
    # str methods
    "profile.email.endswith('@example.com')",
    "profile.email.startswith(('ada', 'bob'))",
    "profile.email.startswith(1)",
    "profile.name.strip().lower()",
    "profile.email.split('@')[1]",
    "profile.email.upper().find('EXAMPLE') >= 0",
    "profile.country.lower(1)",
    "profile.missing.upper()",
    "profile.country.replace('C', 'K')",
    "profile.score_text.isdigit()",
]

# Valid conditions that stay on Jinja as a whole.
JINJA_EXPRESSIONS = [
    "profile.tags.append('x')",
    "profile.tags.sort()",
    "profile.tags | first",
    "profile.tags | join(',')",
    "profile.email.format(1)",
    "'y' if profile.flag",
    "within(ts=profile.last_seen, duration='1d')",
    "ago()",
    "profile.tags[1:] | list",
    "profile._private",
    "profile['_private']",
    "profile.country.lower(*profile.tags)",
    "profile.tags is sequence",
    "profile.tags is iterable",
    "profile.foo is callable",
]


def _outcome(source: str, ctx: dict[str, Any], *, jinja: bool) -> tuple[str, Any]:
    expr = compile_expression_value(source)
    try:
        return "value", (expr.jinja_only() if jinja else expr).eval(ctx)
    except TemplateRenderError as exc:
        return "error", str(exc)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def _assert_paths_agree(source: str, ctx: dict[str, Any]) -> None:
    condition = compile_condition(source)
    assert condition.test(ctx) == condition.jinja_only().test(ctx), (source, ctx.get("profile"))
    fast_kind, fast_value = _outcome(source, ctx, jinja=False)
    ref_kind, ref_value = _outcome(source, ctx, jinja=True)
    assert fast_kind == ref_kind, (source, fast_value, ref_value)
    assert _same(fast_value, ref_value), (source, fast_value, ref_value)


def test_the_tables_are_big_enough() -> None:
    assert len(FAST_EXPRESSIONS) >= 80
    assert len(set(FAST_EXPRESSIONS)) == len(FAST_EXPRESSIONS)


@pytest.mark.parametrize("name", sorted(CONTEXTS))
@pytest.mark.parametrize("source", FAST_EXPRESSIONS + JINJA_EXPRESSIONS)
def test_fast_path_agrees_with_jinja(source: str, name: str) -> None:
    _assert_paths_agree(source, CONTEXTS[name])


def _narrowed(source: str, ctx: dict[str, Any]) -> dict[str, Any]:
    """What the runtime's `Turn.context` passes: only the names the expression reads, plus
    the clock (`_now`, the helpers, and `now` only if named) when it reads a time name."""
    names = compile_condition(source).names
    narrow = {k: v for k, v in ctx.items() if k in names and k in ("event", "profile", "journey")}
    if names & {"now", "ago", "days_since", "within", "datetime"}:
        narrow.update(clock_context(NOW, moment="now" in names))
    return narrow


@pytest.mark.parametrize("name", ["full", "empty", "wrong_types", "epochs_and_mappings"])
@pytest.mark.parametrize("source", FAST_EXPRESSIONS + JINJA_EXPRESSIONS)
def test_a_context_narrowed_to_the_names_read_changes_nothing(source: str, name: str) -> None:
    full = CONTEXTS[name]
    narrow = _narrowed(source, full)
    condition = compile_condition(source)
    assert condition.test(narrow) == condition.test(full)
    assert condition.jinja_only().test(narrow) == condition.jinja_only().test(full)
    assert _outcome(source, narrow, jinja=False) == _outcome(source, full, jinja=False)
    assert _outcome(source, narrow, jinja=True) == _outcome(source, full, jinja=True)
    _assert_paths_agree(source, narrow)


def test_names_are_the_root_names_read() -> None:
    assert compile_condition("event.properties.value >= 50").names == {"event"}
    assert compile_condition("profile").names == {"profile"}
    assert compile_condition("days_since(profile.x) > 2 and journey.id").names == {
        "days_since",
        "profile",
        "journey",
    }
    assert compile_condition("1 < 2").names == frozenset()


@pytest.mark.parametrize("source", FAST_EXPRESSIONS)
def test_supported_expressions_compile_to_a_fast_evaluator(source: str) -> None:
    assert compile_fast(source) is not None
    assert compile_condition(source).uses_fast_path
    assert compile_expression_value(source).uses_fast_path


@pytest.mark.parametrize("source", JINJA_EXPRESSIONS)
def test_other_expressions_stay_on_jinja(source: str) -> None:
    assert compile_fast(source) is None
    assert not compile_condition(source).uses_fast_path


def test_most_of_the_table_is_answered_without_jinja() -> None:
    # Falling back at run time is correct but slow; the typical contexts must not need it.
    answered = deferred = 0
    for name in ("full", "empty", "wrong_types", "epochs_and_mappings"):
        for source in FAST_EXPRESSIONS:
            fast = compile_fast(source)
            assert fast is not None
            try:
                fast(CONTEXTS[name])
            except NeedsJinja:
                deferred += 1
            except Exception:
                answered += 1
            else:
                answered += 1
    assert answered / (answered + deferred) > 0.95, (answered, deferred)


@pytest.mark.parametrize(
    ("source", "ctx_name"),
    [
        ("journey.id", "hand_made"),  # a name the context lacks is Jinja's Undefined
        ("journey is defined", "hand_made"),
        ("profile.nested.upper()", "full"),  # on a dict it calls the key's value
        ("now.year", "full"),  # an attribute of a Python object
        ("profile.tags.count", "full"),
        ("profile.metrics['missing']", "epochs_and_mappings"),
        ("profile.country['upper']", "full"),
    ],
)
def test_values_outside_the_subset_go_back_to_jinja(source: str, ctx_name: str) -> None:
    fast = compile_fast(source)
    assert fast is not None
    with pytest.raises(NeedsJinja):
        fast(CONTEXTS[ctx_name])
    _assert_paths_agree(source, CONTEXTS[ctx_name])


def test_a_rebound_helper_name_goes_back_to_jinja() -> None:
    ctx = dict(CONTEXTS["full"])
    ctx["days_since"] = lambda ts: 12345
    fast = compile_fast("days_since(profile.last_seen)")
    assert fast is not None
    with pytest.raises(NeedsJinja):
        fast(ctx)
    _assert_paths_agree("days_since(profile.last_seen)", ctx)


def test_other_mappings_as_context_use_jinja() -> None:
    class Ctx(Mapping[str, Any]):
        def __init__(self, data: dict[str, Any]) -> None:
            self._data = data

        def __getitem__(self, key: str) -> Any:
            return self._data[key]

        def __iter__(self) -> Iterator[str]:
            return iter(self._data)

        def __len__(self) -> int:
            return len(self._data)

    ctx = Ctx(CONTEXTS["full"])
    assert compile_condition("profile.country == 'CN'").test(ctx) == (True, None)


# --------------------------------------------------------------------------- the sandbox


class Spy(str):
    """A str subclass whose methods would report being called."""

    calls: list[str] = []  # noqa: RUF012 - shared on purpose

    def startswith(self, *args: Any) -> bool:
        Spy.calls.append("startswith")
        return True


def test_a_str_subclass_never_has_its_methods_called_by_the_fast_path() -> None:
    ctx = build_context(now=NOW, event=None, profile={"email": Spy("x")}, journey=None)
    fast = compile_fast("profile.email.startswith('a')")
    assert fast is not None
    with pytest.raises(NeedsJinja):
        fast(ctx)
    assert Spy.calls == []


@pytest.mark.parametrize(
    "source",
    [
        "''.__class__",
        "event.__init__",
        "profile.__class__.__mro__",
        "profile['__dict__']",
        "profile.tags.__len__()",
    ],
)
def test_dunders_are_compile_errors(source: str) -> None:
    with pytest.raises(ExpressionError, match="is not allowed"):
        compile_fast(source)
    with pytest.raises(ExpressionError, match="is not allowed"):
        compile_condition(source)


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("profile.tags.append('x')", "SecurityError"),
        ("profile.tags.sort()", "SecurityError"),
        ("profile.tags.clear()", "SecurityError"),
        ("profile.metrics.update({'a': 1})", "not callable"),  # a dict's keys are its attributes
        ("'abc'['__cl' ~ 'ass__']", "SecurityError"),
        ("profile.tags['append']('x')", "SecurityError"),
        ("profile.tags[profile.method]", "SecurityError"),
        ("profile.email.format(1)", "SecurityError"),
    ],
)
def test_unsafe_access_is_refused_and_mutates_nothing(source: str, fragment: str) -> None:
    profile = {"tags": ["vip"], "metrics": {"a": 0}, "email": "{0.__class__}", "method": "pop"}
    ctx = build_context(now=NOW, event=None, profile=profile, journey=None)
    fast = compile_fast(source)
    if fast is not None:  # dynamic names compile, and are handed to the sandbox at run time
        with pytest.raises(NeedsJinja):
            fast(ctx)
    ok, error = compile_condition(source).test(ctx)
    assert ok is False
    assert error is not None and fragment in error
    assert profile == {
        "tags": ["vip"],
        "metrics": {"a": 0},
        "email": "{0.__class__}",
        "method": "pop",
    }


def test_results_are_not_shared_between_evaluations() -> None:
    value = compile_expression_value("[1, 2]")
    first = value.eval(CONTEXTS["full"])
    first.append(3)
    assert value.eval(CONTEXTS["full"]) == [1, 2]
    default = compile_expression_value("profile.foo | default([1])")
    default.eval(CONTEXTS["full"]).append(2)
    assert default.eval(CONTEXTS["full"]) == [1]


# --------------------------------------------------------------------------- generated


PATHS = [
    "profile.country",
    "profile.tags",
    "profile.lead_score",
    "profile.score_text",
    "profile.age",
    "profile.missing",
    "profile.metrics.spend_180d",
    "profile.metrics.nope",
    "profile.nested.list",
    "profile.orders",
    "profile.email",
    "profile.last_seen",
    "profile.flag",
    "profile.zero",
    "event.properties.value",
    "event.properties.items",
    "event.timestamp",
    "event.type",
    "journey.variant",
    "now",
]
LITERALS = [
    "0",
    "1",
    "3",
    "9",
    "-2",
    "0.5",
    "2.5",
    "'vip'",
    "'CN'",
    "''",
    "'a'",
    "'2026-04-30'",
    "'7d'",
    "none",
    "true",
    "false",
    "[]",
    "['vip', 'CN']",
    "[1, 2]",
    "{'a': 1}",
]
BINARY = [
    "==",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    "in",
    "not in",
    "and",
    "or",
    "+",
    "-",
    "*",
    "/",
    "//",
    "%",
    "~",
]
UNARY = [
    "not {}",
    "-{}",
    "({} | default(1))",
    "({} | default('x', true))",
    "({} | length)",
    "({} | lower)",
    "({} | int)",
    "({} | string)",
    "({} | round(1))",
    "({} is none)",
    "({} is not none)",
    "({} is number)",
    "({} is string)",
    "({} is defined)",
    "({} is divisibleby 3)",
    "days_since({})",
    "datetime({})",
    "within({}, '7d')",
    "ago({})",
    "({}).startswith('a')",
    "({}).strip()",
    "({})[0]",
    "({})[1:]",
    "({})['a']",
    "({}).a",
    "({} ** 2)",
    "[{}]",
]


def _expressions() -> st.SearchStrategy[str]:
    atoms = st.sampled_from(PATHS + LITERALS)

    def extend(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        binary = st.builds(
            lambda a, op, b: f"({a} {op} {b})", inner, st.sampled_from(BINARY), inner
        )
        unary = st.builds(lambda fmt, a: fmt.format(a), st.sampled_from(UNARY), inner)
        chained = st.builds(lambda a, b, c: f"({a} < {b} <= {c})", inner, inner, inner)
        branch = st.builds(lambda a, b, c: f"({a} if {b} else {c})", inner, inner, inner)
        indexed = st.builds(lambda a, b: f"({a})[{b}]", inner, inner)
        return binary | unary | chained | branch | indexed

    return st.recursive(atoms, extend, max_leaves=6)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(source=_expressions(), ctx_name=st.sampled_from(["full", "empty", "wrong_types"]))
def test_generated_expressions_agree(source: str, ctx_name: str) -> None:
    try:
        compile_condition(source)
    except ExpressionError:
        # e.g. `ago(...)` of a bad duration literal: refused before either path runs
        with pytest.raises(ExpressionError):
            compile_fast(source)
        return
    _assert_paths_agree(source, CONTEXTS[ctx_name])


# --------------------------------------------------------------------------- cost


TYPICAL = [
    "event.properties.value >= 50",
    "'vip' in profile.tags",
    "profile.country in ['CN', 'US']",
    "(event.properties.path or '').startswith('/pricing')",
    "profile.metrics.last_purchase_at is not none"
    " and days_since(profile.metrics.last_purchase_at) <= 30",
    "(profile.lead_score or 0) >= 50",
]


def test_typical_condition_cost() -> None:
    # Printed, not asserted: machines differ. Run with -s to see it.
    ctx = CONTEXTS["full"]
    print()
    for source in TYPICAL:
        fast = compile_condition(source)
        slow = fast.jinja_only()
        assert fast.test(ctx) == slow.test(ctx) == (True, None)
        number = 20_000
        timings = []
        for condition in (fast, slow, fast):  # fast twice: the first run also warms up
            runs = timeit.repeat(partial(condition.test, ctx), number=number, repeat=5)
            timings.append(min(runs) / number * 1e6)
        timings[0] = min(timings[0], timings.pop())
        print(
            f"{timings[0]:5.2f} µs fast, {timings[1]:5.2f} µs Jinja "
            f"(x{timings[1] / timings[0]:.1f}): {source}"
        )
