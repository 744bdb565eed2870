"""The `herald` command line.

Why every command's implementation is imported inside its handler: `herald validate` runs in
editors and pre-commit hooks and must start in well under a second, so it may not pay for
importing faust, aiokafka or the HTTP stack that `run`/`dev`/`bench` need. Commands other than
`validate` and `schema` live in `workers.cmd_<name>` modules exposing `run(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

Handler = Callable[[argparse.Namespace], int]

ROLES = ("all", "api", "processor", "dispatcher")
SCHEMA_KINDS = ("journey", "segment", "metrics", "settings")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `herald` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    """Every subcommand and its arguments (the contract in docs/runtime.md)."""
    parser = argparse.ArgumentParser(
        prog="herald", description="Event-driven marketing automation: YAML journeys."
    )
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    p = sub.add_parser("validate", help="check a rules folder or journey file")
    p.add_argument(
        "path",
        nargs="?",
        default=None,
        help="rules folder or journey file (default: $HERALD_RULES_DIR or rules/)",
    )
    p.set_defaults(handler=cmd_validate)

    p = sub.add_parser("schema", help="print the JSON Schema of a journey file")
    p.add_argument(
        "--kind",
        choices=SCHEMA_KINDS,
        default="journey",
        help="which rules file to describe (default: journey)",
    )
    p.set_defaults(handler=cmd_schema)

    p = sub.add_parser("simulate", help="offline, virtual-clock run of the rules over events")
    p.add_argument("path", help="rules folder or one journey file")
    p.add_argument("--events", required=True, help="events, one JSON object per line")
    p.add_argument("--profiles", help="profiles, one {user_id, traits} JSON object per line")
    p.add_argument("--start", help="virtual start time, ISO 8601 (default: first event's time)")
    p.add_argument(
        "--until",
        help="virtual end time, inclusive, ISO 8601 (default: last event's time + 7 days)",
    )
    p.add_argument("--trace", action="store_true", help="print every step taken to stderr")
    p.add_argument(
        "--jobs",
        type=_positive_int,
        help="processes to split the users over; the output is the same "
        "(default: one per CPU for inputs of 40,000+ events)",
    )
    p.set_defaults(handler=_delegate("simulate"))

    for name, text in (
        ("dev", "embedded broker and store, every worker and the API, in the foreground"),
        ("demo", "like dev, feeding the sample events; exits by itself with a summary"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--rules", default=None, help="rules folder (default: $HERALD_RULES_DIR)")
        p.add_argument(
            "--partitions",
            type=_positive_int,
            default=None,
            help="partitions of herald.events (default: $HERALD_PARTITIONS)",
        )
        p.set_defaults(handler=_delegate(name))

    p = sub.add_parser("run", help="production entry point against configured Kafka and Redis")
    p.add_argument("--role", choices=ROLES, default="all", help="which worker(s) to run")
    p.add_argument("--rules", default=None, help="rules folder (default: $HERALD_RULES_DIR)")
    p.set_defaults(handler=_delegate("run"))

    p = sub.add_parser("emit", help="send one event through the HTTP API")
    p.add_argument("type", metavar="TYPE", help="event type, e.g. cart_add")
    p.add_argument("--user", required=True, help="user id")
    p.add_argument(
        "--prop",
        action="append",
        default=[],
        type=_key_value,
        metavar="K=V",
        help="event property (repeatable); V is read as JSON when it parses",
    )
    p.add_argument(
        "--api-url",
        default=None,
        help="API base URL (default: http://$HERALD_API_HOST:$HERALD_API_PORT)",
    )
    p.add_argument(
        "--trait",
        action="append",
        default=[],
        type=_key_value,
        metavar="K=V",
        help="profile trait set with the event (repeatable); V is read as JSON when it parses",
    )
    p.add_argument("--api-key", default=None, help="API key (default: first of $HERALD_API_KEYS)")
    p.set_defaults(handler=_delegate("emit"))

    p = sub.add_parser("status", help="live throughput, lag, timers and dispatch per journey")
    p.add_argument("--once", action="store_true", help="print one snapshot and exit")
    p.add_argument(
        "--json", action="store_true", help="print the facts as JSON (one object per second)"
    )
    p.set_defaults(handler=_delegate("status"))

    p = sub.add_parser("bench", help="run the benchmark; last line is a JSON summary")
    p.add_argument("--events", type=_positive_int, default=None, help="events to process (N)")
    p.add_argument(
        "--journeys",
        type=_positive_int,
        default=None,
        help="generate J journeys instead of loading the sample library",
    )
    p.add_argument("--users", type=_positive_int, default=None, help="distinct users (U)")
    p.add_argument(
        "--no-embedded",
        dest="embedded",
        action="store_false",
        help="use the configured Kafka and Redis instead of starting embedded ones",
    )
    p.set_defaults(handler=_delegate("bench"))
    return parser


# --------------------------------------------------------------------------- validate, schema


def cmd_validate(args: argparse.Namespace) -> int:
    """Print every problem as `path:line:col: message` (stdout) and a summary line (stderr)."""
    from engine.errors import RulesError
    from engine.language.loader import load_rules

    shown = args.path or os.environ.get("HERALD_RULES_DIR") or "rules/"
    try:
        rules = load_rules(shown)
    except RulesError as exc:
        for problem in exc.problems:
            print(problem)
        files = len({p.path for p in exc.problems})
        print(f"{_count(len(exc.problems), 'error')} in {_count(files, 'file')}", file=sys.stderr)
        return 1
    print(
        f"{shown} OK: {_count(len(rules.journeys), 'journey')}, "
        f"{_count(len(rules.segments), 'segment')}, {_count(len(rules.metrics), 'metric')}, "
        f"{_count(len(rules.templates.names()), 'template')}",
        file=sys.stderr,
    )
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    """Print a rules file's JSON Schema (journey by default)."""
    from engine.language.schema import rules_json_schema

    print(json.dumps(rules_json_schema(args.kind), indent=2, ensure_ascii=False))
    return 0


# --------------------------------------------------------------------------- helpers


def _delegate(name: str) -> Handler:
    """A handler that imports `workers.cmd_<name>` only when the command runs."""

    def handler(args: argparse.Namespace) -> int:
        module_name = f"workers.cmd_{name}"
        try:
            module: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            print(f"herald {name}: not available in this build", file=sys.stderr)
            return 2
        return int(module.run(args))

    handler.__name__ = f"cmd_{name}"
    return handler


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' if n != 1 else ''}"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _key_value(text: str) -> tuple[str, Any]:
    """`k=v` -> (k, v), v decoded as JSON when it is valid JSON (`n=3`, `ok=true`), else text."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = raw
    return key, value


if __name__ == "__main__":
    sys.exit(main())
