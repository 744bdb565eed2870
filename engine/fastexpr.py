"""Conditions evaluated by plain Python closures built from Jinja's own parse tree.

Why: a Jinja-compiled expression costs ~5 µs per check (a render `Context`, sandbox dispatch on
every attribute, a generator root function) and the hot path runs several checks per event,
while the conditions marketers write are tiny (`event.properties.value >= 50`, `'vip' in
profile.tags`). A closure per node evaluates those in a fraction of that.

Why closures and not generated source: nothing is `eval`ed, and what the fast path can do is
exactly the node handlers below, which keeps it easy to audit.

The contract: for every context the closure gives the value, or raises the exception, that
Jinja's path in `engine.expressions` gives. Two mechanisms keep that true:
- at compile time, anything outside the subset (another node type, filter, test or call, an
  attribute name starting with `_`) makes `compile_node` return None: the expression stays on
  Jinja;
- at run time, a value the subset does not reproduce exactly raises `NeedsJinja` (a name missing
  from the context, which Jinja turns into `Undefined`; attribute access on something that is
  not a mapping; a method call on something that is not a `str`; a helper name bound to
  something else) and the caller evaluates with Jinja instead. That is safe because evaluation
  has no side effects.

The sandbox: the fast path never looks up an attribute whose name comes from the data or the
expression. Data is read by mapping lookups and integer indexes; the only methods are a fixed
table of `str` methods, called on exact `str` values; filters, tests and helpers come from fixed
tables. Everything else is Jinja's sandbox's call.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Callable, Mapping
from typing import Any

from jinja2 import nodes
from jinja2.optimizer import Optimizer
from jinja2.runtime import Undefined, str_join

from engine.expressions import (
    _ENV,
    _HELPERS,
    NeedsJinja,
    _ago,
    _ago_at,
    _days_since,
    _days_since_at,
    _default,
    _now_in,
    _parse_checked,
    _to_datetime,
    _within,
    _within_at,
    to_moment,
)

__all__ = ["Fast", "NeedsJinja", "compile_fast", "compile_node"]

Fast = Callable[[Mapping[str, Any]], Any]
"""An evaluator: the expression's value for a context (the names a condition sees)."""

_Step = Callable[[Any, Any], Any]
_MISSING: Any = object()
_SCALARS = (str, int, float, bool, type(None))
_SEQUENCES = frozenset({list, tuple, str})


class _Unsupported(Exception):
    """Compile time: this node is outside the subset; the expression stays on Jinja."""


def compile_fast(source: str) -> Fast | None:
    """The fast evaluator for `source`, or None when only Jinja can evaluate it.

    Raises ExpressionError for a source `compile_condition` refuses. The evaluator expects the
    dict `build_context` makes (or a hand-made dict) and may raise `NeedsJinja`.
    """
    return compile_node(_parse_checked(source))


def compile_node(expr: nodes.Expr) -> Fast | None:
    """Like `compile_fast`, from an already parsed and checked expression (left unchanged)."""
    try:
        # Jinja's code generator first folds every subtree it can evaluate at compile time,
        # and folding does not always mean what run time means (`none[1:]` folds to None
        # through the environment's getitem, but raises when run). Building from the same
        # folded tree reproduces that by construction.
        tree = Optimizer(_ENV).visit(copy.deepcopy(expr), nodes.EvalContext(_ENV))
        return _build(tree)
    except (_Unsupported, RecursionError):
        return None


# --------------------------------------------------------------------------- reading data


def _absent(ctx: Mapping[str, Any], name: str) -> Any:
    # Mirrors `expressions._parent`: a context without the helpers gets them underneath.
    if "days_since" not in ctx:
        helper = _HELPERS.get(name, _MISSING)
        if helper is not _MISSING:
            return helper
    raise NeedsJinja(name)  # Jinja makes it an Undefined, which only Jinja reproduces


# Exact builtin types: no instance attributes and no `__getattr__`, so a name outside
# `dir(type)` is an AttributeError, after which the sandbox tries `obj[name]` (a TypeError for
# all of these) and settles on None. Computed from the types, never from a value.
_PYTHON_NAMES: dict[type, frozenset[str]] = {
    t: frozenset(dir(t)) for t in (str, list, tuple, int, float, bool)
}


def _attr(obj: Any, key: str) -> Any:
    """`_ConditionEnvironment.getattr` for anything but a plain dict."""
    if obj is None:
        return None
    if isinstance(obj, dict | Mapping):
        try:
            return obj[key]
        except (KeyError, TypeError):
            return None
    names = _PYTHON_NAMES.get(type(obj))
    if names is not None and key not in names:
        return None
    raise NeedsJinja(key)  # a Python attribute: the sandbox decides


def _item(obj: Any, key: Any) -> Any:
    """`_ConditionEnvironment.getitem` for anything but a plain dict."""
    if obj is None:
        return None
    names = _PYTHON_NAMES.get(type(obj))
    if names is not None:
        kind = type(key)
        if kind is int or kind is bool:
            if type(obj) in _SEQUENCES:
                try:
                    return obj[key]
                except IndexError:
                    return None
            return None  # a number is not subscriptable
        if kind is str:
            if key in names:
                raise NeedsJinja(key)  # the sandbox returns that attribute, or refuses it
            return None
        if kind is float or key is None:
            return None  # a TypeError, and not a name to look up
        raise NeedsJinja(key)
    if isinstance(obj, dict | Mapping):
        try:
            return obj[key]
        except (TypeError, LookupError):
            pass  # the sandbox goes on to look for an attribute of that name
    raise NeedsJinja(key)


def _subscript(obj: Any, key: Any) -> Any:
    if type(obj) is dict:
        try:
            return obj.get(key)
        except TypeError:  # unhashable key
            return None
    return _item(obj, key)


def _build_path(node: nodes.Expr) -> Fast:
    """`profile.metrics.spend` and friends: one closure for the whole chain of lookups."""
    steps: list[tuple[Any, _Step]] = []
    while True:
        if isinstance(node, nodes.Getattr):
            steps.append((_key(node.attr), _attr))
            node = node.node
        elif isinstance(node, nodes.Getitem) and type(node.arg) is nodes.Const:
            steps.append((_key(node.arg.value), _item))
            node = node.node
        else:
            break
    steps.reverse()
    if type(node) is nodes.Name:
        return _named_path(node.name, tuple(steps))
    return _path(_build(node), tuple(steps))


def _key(value: Any) -> Any:
    if type(value) not in _SCALARS or (type(value) is str and value.startswith("_")):
        raise _Unsupported(f"key {value!r}")
    return value


def _named_path(name: str, steps: tuple[tuple[Any, _Step], ...]) -> Fast:
    # Unrolled for the usual depths: this is most of the work of a typical condition.
    if not steps:

        def lookup(ctx: Mapping[str, Any]) -> Any:
            value = ctx.get(name, _MISSING)
            return _absent(ctx, name) if value is _MISSING else value

        return lookup
    if len(steps) == 1:
        ((k1, s1),) = steps

        def path1(ctx: Mapping[str, Any]) -> Any:
            obj = ctx.get(name, _MISSING)
            if obj is _MISSING:
                obj = _absent(ctx, name)
            return obj.get(k1) if type(obj) is dict else s1(obj, k1)

        return path1
    if len(steps) == 2:
        (k1, s1), (k2, s2) = steps

        def path2(ctx: Mapping[str, Any]) -> Any:
            obj = ctx.get(name, _MISSING)
            if obj is _MISSING:
                obj = _absent(ctx, name)
            obj = obj.get(k1) if type(obj) is dict else s1(obj, k1)
            return obj.get(k2) if type(obj) is dict else s2(obj, k2)

        return path2

    def path_n(ctx: Mapping[str, Any]) -> Any:
        obj = ctx.get(name, _MISSING)
        if obj is _MISSING:
            obj = _absent(ctx, name)
        for key, step in steps:
            obj = obj.get(key) if type(obj) is dict else step(obj, key)
        return obj

    return path_n


def _path(base: Fast, steps: tuple[tuple[Any, _Step], ...]) -> Fast:
    def path(ctx: Mapping[str, Any]) -> Any:
        obj = base(ctx)
        for key, step in steps:
            obj = obj.get(key) if type(obj) is dict else step(obj, key)
        return obj

    return path


def _build_getitem(node: nodes.Getitem) -> Fast:
    if type(node.arg) is nodes.Const:
        return _build_path(node)
    obj = _build(node.node)
    if type(node.arg) is nodes.Slice:
        # Jinja slices with plain Python, bypassing the environment's getitem.
        part = node.arg
        start = _build_optional(part.start)
        stop = _build_optional(part.stop)
        step = _build_optional(part.step)
        return lambda ctx: obj(ctx)[slice(start(ctx), stop(ctx), step(ctx))]
    key = _build(node.arg)
    return lambda ctx: _subscript(obj(ctx), key(ctx))


def _build_optional(node: nodes.Expr | None) -> Fast:
    return _constant(None) if node is None else _build(node)


# --------------------------------------------------------------------------- literals


def _constant(value: Any) -> Fast:
    return lambda ctx: value


def _build_const(node: nodes.Const) -> Fast:
    return _fresh(node.value)


def _fresh(value: Any) -> Fast:
    # Folded constants can be containers; Jinja writes their repr into its code, so each
    # evaluation gets a new object. Anything but plain data stays on Jinja.
    kind = type(value)
    if kind in _SCALARS:
        return _constant(value)
    if kind is tuple and all(type(v) in _SCALARS for v in value):
        return _constant(value)
    if kind in (list, tuple):
        items = tuple(_fresh(v) for v in value)
        if kind is list:
            return lambda ctx: [item(ctx) for item in items]
        return lambda ctx: tuple([item(ctx) for item in items])
    if kind is dict:
        pairs = tuple((_fresh(k), _fresh(v)) for k, v in value.items())
        return lambda ctx: {key(ctx): item(ctx) for key, item in pairs}
    raise _Unsupported(f"constant of type {kind.__name__}")


def _literal(node: nodes.Expr, *, container: bool = False) -> tuple[bool, Any]:
    """(True, value) when `node` is a literal that can be built once.

    Only for comparison operands, which never escape the expression; `container` asks for a
    tuple in place of a list (the right side of `in`: the same membership test, no list per
    call).
    """
    if type(node) is nodes.Const:
        value = node.value
        if type(value) in _SCALARS or (type(value) in (list, tuple) and _plain_data(value)):
            return True, tuple(value) if container and type(value) is list else value
        return False, None
    if type(node) in (nodes.List, nodes.Tuple):
        items = node.items  # type: ignore[attr-defined]
        if all(type(i) is nodes.Const and type(i.value) in _SCALARS for i in items):
            values = [i.value for i in items]
            if container or type(node) is nodes.Tuple:
                return True, tuple(values)
            return True, values
    return False, None


def _plain_data(value: Any) -> bool:
    kind = type(value)
    if kind in (list, tuple):
        return all(_plain_data(v) for v in value)
    if kind is dict:
        return all(_plain_data(k) and _plain_data(v) for k, v in value.items())
    return kind in _SCALARS


def _build_list(node: nodes.List) -> Fast:
    items = tuple(_build(i) for i in node.items)
    return lambda ctx: [item(ctx) for item in items]


def _build_tuple(node: nodes.Tuple) -> Fast:
    if node.ctx != "load":
        raise _Unsupported("tuple target")
    items = tuple(_build(i) for i in node.items)
    return lambda ctx: tuple([item(ctx) for item in items])


def _build_dict(node: nodes.Dict) -> Fast:
    pairs = tuple((_build(p.key), _build(p.value)) for p in node.items)
    return lambda ctx: {key(ctx): value(ctx) for key, value in pairs}


def _build_concat(node: nodes.Concat) -> Fast:
    parts = tuple(_build(n) for n in node.nodes)
    return lambda ctx: str_join([part(ctx) for part in parts])


# --------------------------------------------------------------------------- operators


_VS_CONSTANT: dict[str, Callable[[Fast, Any], Fast]] = {
    "eq": lambda f, c: lambda ctx: f(ctx) == c,
    "ne": lambda f, c: lambda ctx: f(ctx) != c,
    "lt": lambda f, c: lambda ctx: f(ctx) < c,
    "lteq": lambda f, c: lambda ctx: f(ctx) <= c,
    "gt": lambda f, c: lambda ctx: f(ctx) > c,
    "gteq": lambda f, c: lambda ctx: f(ctx) >= c,
    "in": lambda f, c: lambda ctx: f(ctx) in c,
    "notin": lambda f, c: lambda ctx: f(ctx) not in c,
}
_CONSTANT_VS: dict[str, Callable[[Any, Fast], Fast]] = {
    "eq": lambda c, g: lambda ctx: c == g(ctx),
    "ne": lambda c, g: lambda ctx: c != g(ctx),
    "lt": lambda c, g: lambda ctx: c < g(ctx),
    "lteq": lambda c, g: lambda ctx: c <= g(ctx),
    "gt": lambda c, g: lambda ctx: c > g(ctx),
    "gteq": lambda c, g: lambda ctx: c >= g(ctx),
    "in": lambda c, g: lambda ctx: c in g(ctx),
    "notin": lambda c, g: lambda ctx: c not in g(ctx),
}
_VS: dict[str, Callable[[Fast, Fast], Fast]] = {
    "eq": lambda f, g: lambda ctx: f(ctx) == g(ctx),
    "ne": lambda f, g: lambda ctx: f(ctx) != g(ctx),
    "lt": lambda f, g: lambda ctx: f(ctx) < g(ctx),
    "lteq": lambda f, g: lambda ctx: f(ctx) <= g(ctx),
    "gt": lambda f, g: lambda ctx: f(ctx) > g(ctx),
    "gteq": lambda f, g: lambda ctx: f(ctx) >= g(ctx),
    "in": lambda f, g: lambda ctx: f(ctx) in g(ctx),
    "notin": lambda f, g: lambda ctx: f(ctx) not in g(ctx),
}
_COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "lt": operator.lt,
    "lteq": operator.le,
    "gt": operator.gt,
    "gteq": operator.ge,
    "in": lambda a, b: a in b,
    "notin": lambda a, b: a not in b,
}


def _build_compare(node: nodes.Compare) -> Fast:
    if any(op.op not in _COMPARE for op in node.ops):
        raise _Unsupported("comparison operator")
    if len(node.ops) == 1:
        op = node.ops[0].op
        container = op in ("in", "notin")
        right_is_literal, right = _literal(node.ops[0].expr, container=container)
        left_is_literal, left = _literal(node.expr)
        if right_is_literal and not left_is_literal:
            return _VS_CONSTANT[op](_build(node.expr), right)
        if left_is_literal and not right_is_literal:
            return _CONSTANT_VS[op](left, _build(node.ops[0].expr))
        return _VS[op](_build(node.expr), _build(node.ops[0].expr))
    # A chain (`a < b < c`): Python semantics, which is what Jinja compiles it to.
    first = _build(node.expr)
    rest = tuple((_COMPARE[op.op], _build(op.expr)) for op in node.ops)

    def chain(ctx: Mapping[str, Any]) -> Any:
        left = first(ctx)
        result: Any = True
        for compare, operand in rest:
            right = operand(ctx)
            result = compare(left, right)
            if not result:
                return result
            left = right
        return result

    return chain


_ARITHMETIC: dict[type[nodes.BinExpr], Callable[[Any, Any], Any]] = {
    nodes.Add: operator.add,
    nodes.Sub: operator.sub,
    nodes.Mul: operator.mul,
    nodes.Div: operator.truediv,
    nodes.FloorDiv: operator.floordiv,
    nodes.Mod: operator.mod,
    nodes.Pow: operator.pow,
}


def _build_binary(node: nodes.BinExpr) -> Fast:
    op = _ARITHMETIC[type(node)]
    left, right = _build(node.left), _build(node.right)
    return lambda ctx: op(left(ctx), right(ctx))


def _build_and(node: nodes.And) -> Fast:
    left, right = _build(node.left), _build(node.right)
    return lambda ctx: left(ctx) and right(ctx)


def _build_or(node: nodes.Or) -> Fast:
    left, right = _build(node.left), _build(node.right)
    return lambda ctx: left(ctx) or right(ctx)


def _build_not(node: nodes.Not) -> Fast:
    inner = node.node
    if _is_none_test(inner):
        value = _build(inner.node)  # type: ignore[attr-defined]
        return lambda ctx: value(ctx) is not None
    operand = _build(inner)
    return lambda ctx: not operand(ctx)


def _build_neg(node: nodes.Neg) -> Fast:
    operand = _build(node.node)
    return lambda ctx: -operand(ctx)


def _build_pos(node: nodes.Pos) -> Fast:
    operand = _build(node.node)
    return lambda ctx: +operand(ctx)


def _build_condexpr(node: nodes.CondExpr) -> Fast:
    if node.expr2 is None:  # Jinja yields an Undefined there, which only Jinja reproduces
        raise _Unsupported("if-expression without else")
    test, yes, no = _build(node.test), _build(node.expr1), _build(node.expr2)
    return lambda ctx: yes(ctx) if test(ctx) else no(ctx)


# --------------------------------------------------------------------------- filters, tests

# Jinja's own functions (or ours, for `default`), called exactly as its compiled code calls
# them; only ones that take no environment or context, and none that reach into objects.
_FILTERS = frozenset(
    [
        "abs",
        "capitalize",
        "count",
        "d",
        "default",
        "float",
        "int",
        "length",
        "lower",
        "round",
        "string",
        "title",
        "trim",
        "upper",
        "wordcount",
    ]
)
_TESTS = frozenset(
    [
        "!=",
        "<",
        "<=",
        "==",
        ">",
        ">=",
        "boolean",
        "defined",
        "divisibleby",
        "eq",
        "equalto",
        "even",
        "false",
        "float",
        "ge",
        "greaterthan",
        "gt",
        "in",
        "integer",
        "le",
        "lessthan",
        "lower",
        "lt",
        "mapping",
        "ne",
        "none",
        "number",
        "odd",
        "sameas",
        "string",
        "true",
        "undefined",
        "upper",
    ]
)


def _plain(table: Mapping[str, Any], name: str, allowed: frozenset[str]) -> Any:
    func = table.get(name) if name in allowed else None
    if func is None or getattr(func, "jinja_pass_arg", None) is not None:
        raise _Unsupported(name)
    return func


def _is_none_test(node: nodes.Node) -> bool:
    return (
        type(node) is nodes.Test
        and node.name == "none"
        and not node.args
        and not node.kwargs
        and node.dyn_args is None
        and node.dyn_kwargs is None
    )


def _arguments(node: nodes.Filter | nodes.Test | nodes.Call) -> tuple[tuple[Fast, ...], Any]:
    if node.dyn_args is not None or node.dyn_kwargs is not None:
        raise _Unsupported("*args")
    args = tuple(_build(a) for a in node.args)
    kwargs = tuple((k.key, _build(k.value)) for k in node.kwargs)
    return args, kwargs


def _apply(func: Callable[..., Any], value: Fast, node: nodes.Filter | nodes.Test) -> Fast:
    args, kwargs = _arguments(node)
    if not kwargs:
        if not args:
            return lambda ctx: func(value(ctx))
        if len(args) == 1:
            (arg,) = args
            return lambda ctx: func(value(ctx), arg(ctx))

    def apply(ctx: Mapping[str, Any]) -> Any:
        first = value(ctx)
        positional = [a(ctx) for a in args]
        return func(first, *positional, **{k: v(ctx) for k, v in kwargs})

    return apply


def _build_filter(node: nodes.Filter) -> Fast:
    if node.node is None:
        raise _Unsupported("filter block")
    func = _plain(_ENV.filters, node.name, _FILTERS)
    value = _build(node.node)
    simple = len(node.args) == 1 and not node.kwargs and not node.dyn_args and not node.dyn_kwargs
    if func is _default and simple:
        is_literal, fallback = _literal(node.args[0])
        if is_literal and type(fallback) in _SCALARS:  # a shared container must not escape
            # `x | default(0)`: the filter inlined (the same test as `_default`).
            def default(ctx: Mapping[str, Any]) -> Any:
                found = value(ctx)
                return fallback if found is None or isinstance(found, Undefined) else found

            return default
    return _apply(func, value, node)


def _build_test(node: nodes.Test) -> Fast:
    func = _plain(_ENV.tests, node.name, _TESTS)
    value = _build(node.node)
    if _is_none_test(node):
        return lambda ctx: value(ctx) is None
    return _apply(func, value, node)


# --------------------------------------------------------------------------- calls


def _helper_ago(ctx: Mapping[str, Any], duration: Any) -> Any:
    return _ago_at(_now_in(ctx.get), duration)


def _helper_days_since(ctx: Mapping[str, Any], ts: Any) -> Any:
    return _days_since_at(_now_in(ctx.get), ts)


def _helper_within(ctx: Mapping[str, Any], ts: Any, duration: Any) -> Any:
    return _within_at(_now_in(ctx.get), ts, duration)


def _helper_datetime(ctx: Mapping[str, Any], ts: Any) -> Any:
    return to_moment(ts)


# name -> (the object the context must hold under that name, arity, implementation)
_HELPER_CALLS: dict[str, tuple[Any, int, Callable[..., Any]]] = {
    "ago": (_ago, 1, _helper_ago),
    "days_since": (_days_since, 1, _helper_days_since),
    "within": (_within, 2, _helper_within),
    "datetime": (_to_datetime, 1, _helper_datetime),
}
assert set(_HELPER_CALLS) == set(_HELPERS)
assert all(_HELPERS[name] is entry[0] for name, entry in _HELPER_CALLS.items())

# Read-only str methods; the unbound descriptors, so nothing is looked up on the data.
_STR_METHODS: dict[str, Callable[..., Any]] = {
    name: getattr(str, name)
    for name in [
        "capitalize",
        "casefold",
        "count",
        "endswith",
        "find",
        "isalnum",
        "isalpha",
        "isdigit",
        "islower",
        "isupper",
        "lower",
        "lstrip",
        "replace",
        "rstrip",
        "split",
        "startswith",
        "strip",
        "title",
        "upper",
    ]
}


def _build_call(node: nodes.Call) -> Fast:
    if node.kwargs:
        raise _Unsupported("keyword arguments")
    args, _ = _arguments(node)
    callee = node.node
    if type(callee) is nodes.Name and callee.name in _HELPER_CALLS:
        return _helper_call(callee.name, args)
    if type(callee) is nodes.Getattr and callee.attr in _STR_METHODS:
        return _method_call(callee.attr, _build(callee.node), args)
    raise _Unsupported("call")


def _helper_call(name: str, args: tuple[Fast, ...]) -> Fast:
    expected, arity, impl = _HELPER_CALLS[name]
    if len(args) != arity:  # Jinja's TypeError names the wrapper; leave that to Jinja
        raise _Unsupported(f"{name} with {len(args)} arguments")

    def resolve(ctx: Mapping[str, Any]) -> None:
        found = ctx.get(name, _MISSING)
        if found is _MISSING:
            found = _absent(ctx, name)
        if found is not expected:  # the context rebinds the name: Jinja's call rules apply
            raise NeedsJinja(name)

    if arity == 1:
        (arg,) = args

        def call1(ctx: Mapping[str, Any]) -> Any:
            resolve(ctx)
            return impl(ctx, arg(ctx))

        return call1
    first, second = args

    def call2(ctx: Mapping[str, Any]) -> Any:
        resolve(ctx)
        return impl(ctx, first(ctx), second(ctx))

    return call2


def _method_call(name: str, receiver: Fast, args: tuple[Fast, ...]) -> Fast:
    method = _STR_METHODS[name]

    def other(obj: Any, ctx: Mapping[str, Any]) -> Any:
        names = _PYTHON_NAMES.get(type(obj))
        if obj is None or (names is not None and name not in names):
            # Jinja reads the attribute as None, evaluates the arguments, then calls it.
            for arg in args:
                arg(ctx)
            raise TypeError("'NoneType' object is not callable")
        raise NeedsJinja(name)  # a dict's key, a list's method...: Jinja's rules apply

    if len(args) == 1:  # `.startswith('/pricing')`: the usual shape, without a list per call
        (only,) = args

        def call1(ctx: Mapping[str, Any]) -> Any:
            obj = receiver(ctx)
            return method(obj, only(ctx)) if type(obj) is str else other(obj, ctx)

        return call1

    def call(ctx: Mapping[str, Any]) -> Any:
        obj = receiver(ctx)
        if type(obj) is str:
            return method(obj, *[a(ctx) for a in args])
        return other(obj, ctx)

    return call


# --------------------------------------------------------------------------- dispatch


_BUILDERS: dict[type[nodes.Node], Callable[[Any], Fast]] = {
    nodes.Const: _build_const,
    nodes.Name: lambda node: _named_path(node.name, ()),
    nodes.Getattr: _build_path,
    nodes.Getitem: _build_getitem,
    nodes.List: _build_list,
    nodes.Tuple: _build_tuple,
    nodes.Dict: _build_dict,
    nodes.Concat: _build_concat,
    nodes.Compare: _build_compare,
    nodes.And: _build_and,
    nodes.Or: _build_or,
    nodes.Not: _build_not,
    nodes.Neg: _build_neg,
    nodes.Pos: _build_pos,
    nodes.CondExpr: _build_condexpr,
    nodes.Filter: _build_filter,
    nodes.Test: _build_test,
    nodes.Call: _build_call,
    **dict.fromkeys(_ARITHMETIC, _build_binary),
}


def _build(node: nodes.Node) -> Fast:
    builder = _BUILDERS.get(type(node))  # exact types: a subclass is not assumed to behave
    if builder is None:
        raise _Unsupported(type(node).__name__)
    return builder(node)
