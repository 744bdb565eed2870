"""Which profile fields an expression reads, so a change re-evaluates only what it affects.

Why: a purchase moves three metrics; re-testing every segment of the library after every
event would dominate the hot path. Segments and date triggers declare (by their expressions)
what they read; a change to anything else leaves their result as it was.
"""

from __future__ import annotations

from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

ALL = "*"
# An expression calling these reads the clock: its result can change with no field changing.
TIME_NAMES = frozenset({"now", "ago", "days_since", "within", "datetime"})
_ENV = ImmutableSandboxedEnvironment()


def _field(node: nodes.Node) -> str | None:
    """`profile.x` -> "x"; `profile.metrics.y` -> "metrics.y"; else None."""
    if isinstance(node, nodes.Getattr):
        base, name = node.node, node.attr
    elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
        base, name = node.node, str(node.arg.value)
    else:
        return None
    if isinstance(base, nodes.Name) and base.name == "profile":
        return name
    inner = _field(base)
    if inner == "metrics":
        return f"metrics.{name}"
    return None


def profile_dependencies(source: str) -> frozenset[str]:
    """The profile fields `source` reads; `{"*"}` when it uses the profile as a whole."""
    tree = _ENV.parse("{{ (" + source + ") }}")
    found: set[str] = set()
    claimed: set[int] = set()
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        if id(node) in claimed:
            continue
        name = _field(node)
        if name is not None:
            found.add(name)
            inner = node.node  # type: ignore[attr-defined]
            while isinstance(inner, nodes.Getattr | nodes.Getitem):
                claimed.add(id(inner))
                inner = inner.node
            claimed.add(id(inner))
    for name_node in tree.find_all(nodes.Name):
        if name_node.name == "profile" and id(name_node) not in claimed:
            return frozenset({ALL})
    if "metrics" in found:
        found.add(ALL)
    return frozenset(found)


def reads_time(source: str) -> bool:
    """Whether the expression's result can change with time alone."""
    tree = _ENV.parse("{{ (" + source + ") }}")
    return any(n.name in TIME_NAMES for n in tree.find_all(nodes.Name))


def affected(deps: frozenset[str], changed: set[str]) -> bool:
    """Whether a change to `changed` can alter a result that reads `deps`."""
    if ALL in deps or ALL in changed:
        return True
    return not deps.isdisjoint(changed)
