"""Load a rules folder (or one journey file) into a validated, cross-checked `RuleSet`.

Why everything is collected before raising: a marketer fixing a folder wants every mistake in
one run of `herald validate`, each as `path:line:col: message` pointing at what they typed. So
files are parsed with positions (`yamlpos`), validated by the pydantic models, and each pydantic
error is translated here: its `loc` is mapped back to a YAML node (skipping the union tags that
pydantic inserts and that are not data keys), and its message is rewritten for a person.

Layout of a rules folder: `journeys/*.yaml|yml`, `segments/*.yaml|yml`, `metrics.yaml`,
optional `settings.yaml`, `templates/`. A single journey file is checked against the segments
and templates of the folder that holds its folder (`rules/journeys/x.yaml` -> `rules/`), where
those exist.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import types
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, Discriminator, Tag, ValidationError
from pydantic_core import ErrorDetails

from engine.errors import ExpressionError, Problem, RulesError
from engine.language.base import Spec
from engine.language.journey import Journey, MetricsFile, MetricSpec, Segment, Settings
from engine.language.rules import RuleSet
from engine.language.steps import (
    BranchArm,
    BranchStep,
    ElseArm,
    SendStep,
    SplitStep,
    Step,
    UpdateProfileStep,
    WebhookStep,
)
from engine.language.triggers import ScheduleTrigger, SegmentTrigger
from engine.language.yamlpos import YamlDocument, YamlPath, parse_yaml
from engine.templates import TemplateStore, check_value, compile_inline

__all__ = [
    "display_path",
    "explain_errors",
    "iter_steps",
    "journey_version",
    "load_journey_text",
    "load_rules",
    "load_rules_text",
    "validate_document",
]

M = TypeVar("M", bound=BaseModel)
_YAML_SUFFIXES = (".yaml", ".yml")
_MISSING = object()


# --------------------------------------------------------------------------- public API


def load_rules(path: Path | str) -> RuleSet:
    """Load a rules folder or one journey file; raises `RulesError` listing every problem."""
    target = Path(path)
    if target.is_file():
        return _load_files([target], target.parent.parent, whole_folder=False)
    if target.is_dir():
        if (target / "journeys").is_dir():
            return _load_files(_yaml_files(target / "journeys"), target, whole_folder=True)
        loose = _yaml_files(target)
        if loose:  # a folder of journey files, e.g. `rules/journeys/`
            return _load_files(loose, target.parent, whole_folder=False)
        raise RulesError(
            [Problem(display_path(target), 1, 1, "not a rules folder: no journeys/ folder in it")]
        )
    raise RulesError([Problem(display_path(target), 1, 1, "no such file or folder")])


def load_rules_text(
    journeys: Mapping[str, str],
    *,
    segments: Mapping[str, str] | None = None,
    metrics: str | None = None,
    settings: str | None = None,
    templates: TemplateStore | None = None,
) -> RuleSet:
    """Load rules given as text, keyed by the path to report (tests, editors, the API).

    Segment references are checked when `segments` is given, template names when `templates` is.
    """
    sources = _Sources(
        journeys=[parse_yaml(text, name) for name, text in journeys.items()],
        segments=[parse_yaml(text, name) for name, text in (segments or {}).items()],
        metrics=None if metrics is None else parse_yaml(metrics, "metrics.yaml"),
        settings=None if settings is None else parse_yaml(settings, "settings.yaml"),
        templates=templates,
        check_segments=segments is not None,
    )
    return _assemble(sources)


def load_journey_text(text: str, path: str = "journey.yaml") -> Journey:
    """Validate one journey on its own (no cross-file checks)."""
    rules = load_rules_text({path: text})
    return next(iter(rules.journeys.values()))


def display_path(path: Path) -> str:
    """The path as the user gave it, made relative to the working directory when it is inside."""
    if path.is_absolute():
        try:
            return str(path.relative_to(Path.cwd()))
        except ValueError:
            return str(path)
    return str(path)


def journey_version(data: Any) -> str:
    """Short content hash of a journey's YAML data: stable across reloads, new on any edit."""
    canonical = json.dumps(
        data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]


def validate_document(doc: YamlDocument, model: type[M], what: str) -> M | None:
    """Validate a parsed file against `model`; problems are appended to `doc.problems`."""
    if doc.data is None:
        if not doc.problems:
            doc.problems.append(doc.problem((1, 1), f"empty file: expected {what}"))
        return None
    if not isinstance(doc.data, dict):
        doc.problems.append(
            doc.problem(doc.value_pos(()), f"expected {what}, got {_show(doc.data)}")
        )
        return None
    try:
        return model.model_validate(doc.data)
    except ValidationError as exc:
        doc.problems.extend(explain_errors(exc, model, doc))
        return None


# --------------------------------------------------------------------------- reading files


@dataclass
class _Sources:
    journeys: list[YamlDocument]
    segments: list[YamlDocument] = field(default_factory=list)
    metrics: YamlDocument | None = None
    settings: YamlDocument | None = None
    templates: TemplateStore | None = None
    check_segments: bool = True
    extra_problems: list[Problem] = field(default_factory=list)


def _yaml_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix in _YAML_SUFFIXES and p.is_file())


def _read(path: Path) -> YamlDocument:
    shown = display_path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        return YamlDocument(shown, problems=[Problem(shown, 1, 1, f"not UTF-8 text: {exc.reason}")])
    except OSError as exc:
        return YamlDocument(shown, problems=[Problem(shown, 1, 1, f"cannot read: {exc.strerror}")])
    return parse_yaml(text, shown)


def _relocated(problem: Problem) -> Problem:
    shown = display_path(Path(problem.path))
    return (
        problem
        if shown == problem.path
        else Problem(shown, problem.line, problem.col, problem.message)
    )


def _first_existing(folder: Path, names: Sequence[str]) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_file()), None)


def _load_files(journey_files: list[Path], rules_dir: Path, *, whole_folder: bool) -> RuleSet:
    """`whole_folder`: a missing segments/ or templates/ folder means none (so references are
    errors); for a lone journey file, references are only checked against folders that exist."""
    metrics_file = _first_existing(rules_dir, ("metrics.yaml", "metrics.yml"))
    settings_file = _first_existing(rules_dir, ("settings.yaml", "settings.yml"))
    templates_dir = rules_dir / "templates"
    templates: TemplateStore | None = None
    if templates_dir.is_dir():
        templates = TemplateStore.load(templates_dir)
    elif whole_folder:
        templates = TemplateStore.empty()
    segments_dir = rules_dir / "segments"
    return _assemble(
        _Sources(
            journeys=[_read(p) for p in journey_files],
            segments=[_read(p) for p in _yaml_files(segments_dir)],
            metrics=_read(metrics_file) if metrics_file else None,
            settings=_read(settings_file) if settings_file else None,
            templates=templates,
            check_segments=whole_folder or segments_dir.is_dir(),
            extra_problems=[_relocated(p) for p in templates.problems] if templates else [],
        )
    )


# --------------------------------------------------------------------------- assembling


def _assemble(src: _Sources) -> RuleSet:
    problems: list[Problem] = list(src.extra_problems)

    segments: dict[str, Segment] = {}
    segment_docs: dict[str, YamlDocument] = {}
    for doc in src.segments:
        segment = validate_document(doc, Segment, "a segment (`segment:` and `when:`)")
        if segment is not None:
            if segment.segment in segment_docs:
                first = segment_docs[segment.segment].path
                doc.problems.append(
                    doc.problem(
                        doc.value_pos(("segment",)),
                        f"duplicate segment id '{segment.segment}' (already defined in {first})",
                    )
                )
            else:
                segments[segment.segment] = segment
                segment_docs[segment.segment] = doc
        problems.extend(doc.problems)

    metrics: dict[str, MetricSpec] = {}
    if src.metrics is not None:
        table = validate_document(src.metrics, MetricsFile, "a `metrics:` mapping")
        if table is not None:
            metrics = dict(table.metrics)
        problems.extend(src.metrics.problems)

    settings = Settings()
    if src.settings is not None:
        loaded = validate_document(src.settings, Settings, "a settings mapping")
        settings = loaded or settings
        problems.extend(src.settings.problems)

    journeys: dict[str, Journey] = {}
    versions: dict[str, str] = {}
    sources: dict[str, str] = {}
    for doc in src.journeys:
        journey = validate_document(doc, Journey, "a journey (`journey:`, `trigger:`, `steps:`)")
        if journey is not None:
            doc.problems.extend(
                _check_journey(journey, doc, src, segments, sources.get(journey.journey))
            )
            if journey.journey not in journeys:
                journeys[journey.journey] = journey
                versions[journey.journey] = journey_version(doc.data)
                sources[journey.journey] = doc.path
        problems.extend(doc.problems)

    if problems:
        raise RulesError(list(dict.fromkeys(problems)))
    return RuleSet(
        journeys=journeys,
        versions=versions,
        segments=segments,
        metrics=metrics,
        templates=src.templates if src.templates is not None else TemplateStore.empty(),
        settings=settings,
        sources=sources,
    )


def _check_journey(
    journey: Journey,
    doc: YamlDocument,
    src: _Sources,
    segments: Mapping[str, Segment],
    first_file: str | None,
) -> list[Problem]:
    """Checks that need more than one file: ids, segment and template references."""
    found: list[Problem] = []
    if first_file is not None:
        found.append(
            doc.problem(
                doc.value_pos(("journey",)),
                f"duplicate journey id '{journey.journey}' (already defined in {first_file})",
            )
        )
    if src.check_segments:
        for path, name in _segment_refs(journey):
            if name not in segments:
                found.append(
                    doc.problem(
                        doc.value_pos(path),
                        f"unknown segment '{name}'{_did_you_mean(name, segments)}",
                    )
                )
    seen_ids: dict[str, YamlPath] = {}
    for path, step in iter_steps(journey.steps, ("steps",)):
        if step.id is not None:
            if step.id in seen_ids:
                line = doc.value_pos((*seen_ids[step.id], "id"))[0]
                found.append(
                    doc.problem(
                        doc.value_pos((*path, "id")),
                        f"duplicate step id '{step.id}' (first used at line {line})",
                    )
                )
            seen_ids.setdefault(step.id, path)
        if isinstance(step, SendStep):
            found.extend(_check_template(step, path, doc, src.templates))
        elif isinstance(step, UpdateProfileStep | WebhookStep):
            kind = step.KIND
            found.extend(
                _check_value_templates(_data_at(doc.data, (*path, kind)), (*path, kind), doc)
            )
    return found


def _check_template(
    step: SendStep, path: YamlPath, doc: YamlDocument, store: TemplateStore | None
) -> list[Problem]:
    """File templates must exist for the step's channel; inline ones must compile."""
    spec = step.send
    if spec.template is None:
        return _check_inline(spec.subject, spec.body or "", path, doc)
    if store is None or store.has(spec.template, spec.channel):
        return []
    channels = sorted(c for n, c in store.names() if n == spec.template)
    if channels:
        message = (
            f"template '{spec.template}' has no version for channel '{spec.channel}' "
            f"(there is one for: {', '.join(channels)})"
        )
    else:
        names = {n for n, _ in store.names()}
        message = f"unknown template '{spec.template}'{_did_you_mean(spec.template, names)}"
    return [doc.problem(doc.value_pos((*path, "send", "template")), message)]


def _check_inline(
    subject: str | None, body: str, path: YamlPath, doc: YamlDocument
) -> list[Problem]:
    try:
        compile_inline(subject, body, origin=f"{doc.path} {_step_label(path)}")
    except ExpressionError as exc:
        part = "subject" if exc.message.startswith("in subject:") else "body"
        where = f" (line {exc.line} of the {part})" if exc.line > 1 else ""
        message = exc.message.removeprefix("in subject: ")
        return [
            doc.problem(doc.value_pos((*path, "send", part)), f"invalid template: {message}{where}")
        ]
    return []


def _check_value_templates(data: Any, path: YamlPath, doc: YamlDocument) -> Iterator[Problem]:
    """Templated values (`update_profile`, `webhook`) compile now, not at the first send."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _check_value_templates(value, (*path, key), doc)
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from _check_value_templates(value, (*path, i), doc)
    elif isinstance(data, str):
        try:
            check_value(data)
        except ExpressionError as exc:
            yield doc.problem(doc.value_pos(path), f"invalid template: {exc.message}")


def _step_label(path: YamlPath) -> str:
    return ".".join(str(p) for p in path)


def _segment_refs(journey: Journey) -> Iterator[tuple[YamlPath, str]]:
    trigger = journey.trigger
    if isinstance(trigger, ScheduleTrigger):
        yield ("trigger", "segment"), trigger.segment
    elif isinstance(trigger, SegmentTrigger):
        yield ("trigger", "segment", trigger.segment.direction), trigger.segment.name


def iter_steps(steps: Sequence[Step], base: YamlPath) -> Iterator[tuple[YamlPath, Step]]:
    """Every step, nested ones included, with its path in the YAML data."""
    for i, step in enumerate(steps):
        path = (*base, i)
        yield path, step
        if isinstance(step, BranchStep):
            for j, arm in enumerate(step.branch):
                if isinstance(arm, BranchArm):
                    yield from iter_steps(arm.steps, (*path, "branch", j, "steps"))
                elif isinstance(arm, ElseArm):
                    yield from iter_steps(arm.else_.steps, (*path, "branch", j, "else", "steps"))
        elif isinstance(step, SplitStep):
            for j, split_arm in enumerate(step.split):
                yield from iter_steps(split_arm.steps, (*path, "split", j, "steps"))


# --------------------------------------------------------------------------- pydantic errors


@dataclass
class _Located:
    """A pydantic error placed in the YAML data."""

    error: ErrorDetails
    path: YamlPath
    node: Any
    owner: type[BaseModel] | None
    key_error: bool = False
    union: tuple[tuple[Any, ...], str] | None = None


def explain_errors(
    exc: ValidationError, model: type[BaseModel], doc: YamlDocument
) -> list[Problem]:
    """Turn a pydantic ValidationError into located, human problems."""
    located = _keep_best_union_members([_locate(model, doc.data, err) for err in exc.errors()])
    located = _drop_missing_explained_by_typos(located)
    problems = [_describe(item, doc) for item in located]
    return list(dict.fromkeys(problems))


def _drop_missing_explained_by_typos(located: list[_Located]) -> list[_Located]:
    """`untill:` is both an unknown key and a missing `until`; the did-you-mean says it all."""
    typos: set[tuple[YamlPath, str]] = set()
    for item in located:
        if item.error["type"] == "extra_forbidden" and item.path:
            close = _close_match(str(item.path[-1]), _allowed_keys(item.owner))
            if close:
                typos.add((item.path[:-1], close))
    return [
        item
        for item in located
        if not (item.error["type"] == "missing" and (item.path[:-1], str(item.path[-1])) in typos)
    ]


def _settle(tp: Any, meta: list[Any]) -> Any:
    """Strip `Annotated` (collecting its metadata) and `X | None` around a type."""
    while True:
        if get_origin(tp) is Annotated:
            inner, *extra = get_args(tp)
            meta.extend(extra)
            tp = inner
            continue
        if _is_union(tp):
            members = [a for a in get_args(tp) if a is not type(None)]
            if len(members) == 1:
                tp = members[0]
                continue
        return tp


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


def _member_label(member: Any) -> tuple[str | None, Any]:
    """(Tag of a union member, if any; the member type without Annotated)."""
    meta: list[Any] = []
    inner = _settle(member, meta)
    tag = next((m.tag for m in meta if isinstance(m, Tag)), None)
    return tag, inner


def _field_type(model: type[BaseModel], key: Any) -> tuple[str, Any] | None:
    """(data key, annotated type) of the field that `key` (alias or name) names."""
    for name, info in model.model_fields.items():
        if key in (info.alias, name):
            tp: Any = info.annotation
            meta = list(info.metadata)
            mark = info.discriminator
            if mark is not None:
                meta.append(mark if isinstance(mark, Discriminator) else Discriminator(mark))
            if meta:
                tp = Annotated[(tp, *meta)]
            return info.alias or name, tp
    return None


def _locate(model: type[BaseModel], data: Any, err: ErrorDetails) -> _Located:
    """Walk the error's `loc` through the model's types and the data side by side.

    The types say which `loc` segments are union tags or member labels (not data keys); the
    data gives the path whose position we report.
    """
    tp: Any = model
    node: Any = data
    path: list[Any] = []
    owner: type[BaseModel] | None = None
    key_error = False
    union: tuple[tuple[Any, ...], str] | None = None
    loc = err["loc"]
    for i, seg in enumerate(loc):
        meta: list[Any] = []
        tp = _settle(tp, meta)
        if _is_union(tp):
            members = [_member_label(m) for m in get_args(tp) if m is not type(None)]
            if any(isinstance(m, Discriminator) for m in meta):
                tp = next((inner for tag, inner in members if tag == seg), None)
            else:
                tp = next(
                    (inner for _, inner in members if getattr(inner, "__name__", None) == seg),
                    None,
                )
                if union is None:
                    union = (tuple(loc[:i]), str(seg))
            continue
        if seg == "[key]":
            key_error = True
            continue
        key: Any = seg
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            owner = tp
            found = _field_type(tp, seg)
            key, tp = found if found else (seg, None)
        elif get_origin(tp) in (list, tuple, set, frozenset):
            args = get_args(tp)
            tp = args[0] if args else None
        elif get_origin(tp) is dict:
            args = get_args(tp)
            tp = args[1] if len(args) == 2 else None
        else:
            tp = None
            if not _has(node, seg):
                continue  # a label pydantic added below a type we do not model
        path.append(key)
        node = node[key] if _has(node, key) else _MISSING
    return _Located(err, tuple(path), node, owner, key_error, union)


def _data_at(data: Any, path: YamlPath) -> Any:
    for key in path:
        if not _has(data, key):
            return None
        data = data[key]
    return data


def _has(node: Any, key: Any) -> bool:
    if isinstance(node, dict):
        return key in node
    if isinstance(node, list) and isinstance(key, int):
        return 0 <= key < len(node)
    return False


_TYPE_ERRORS = ("model_type", "model_attributes_type", "dict_type", "is_instance_of")


def _keep_best_union_members(located: list[_Located]) -> list[_Located]:
    """Of an undiscriminated union (`wait: 30m` or `wait: {until: ..}`), keep only the errors of
    the member the user evidently meant: the one whose errors reach deepest into the data, and
    not merely "wrong type"."""
    groups: dict[tuple[Any, ...], dict[str, list[_Located]]] = {}
    for item in located:
        if item.union is not None:
            prefix, label = item.union
            groups.setdefault(prefix, {}).setdefault(label, []).append(item)
    chosen: dict[tuple[Any, ...], str] = {}
    for prefix, members in groups.items():

        def score(label: str, members: dict[str, list[_Located]] = members) -> tuple[int, int]:
            items = members[label]
            depth = max(len(i.path) for i in items)
            only_type = all(
                i.error["type"] in _TYPE_ERRORS or i.error["type"].endswith("_type") for i in items
            )
            return depth, 0 if only_type else 1

        chosen[prefix] = max(members, key=score)
    return [
        item for item in located if item.union is None or chosen[item.union[0]] == item.union[1]
    ]


# --------------------------------------------------------------------------- messages


def _describe(item: _Located, doc: YamlDocument) -> Problem:
    err = item.error
    kind = err["type"]
    path = item.path
    if kind == "extra_forbidden":
        key = str(path[-1]) if path else "?"
        allowed = _allowed_keys(item.owner)
        return doc.problem(doc.key_pos(path), f"unknown key '{key}'{_did_you_mean(key, allowed)}")
    if kind == "missing":
        name = err["loc"][-1] if err["loc"] else "?"
        return doc.problem(doc.value_pos(path[:-1]), f"missing required key '{name}'")
    pos = doc.key_pos(path) if item.key_error else doc.value_pos(path)
    if kind.endswith("_kind") and "kinds" in err.get("ctx", {}):
        return doc.problem(pos, _kind_message(err, item.node))
    return doc.problem(pos, _message(err))


def _kind_message(err: ErrorDetails, node: Any) -> str:
    """`a step needs exactly one of: ...`, plus what was actually found."""
    kinds = [k.strip() for k in str(err.get("ctx", {})["kinds"]).split(",")]
    base = err["msg"]
    if not isinstance(node, dict):
        return f"{base}; got {_show(node)}"
    present = [k for k in kinds if k in node]
    if len(present) > 1:
        return f"{base}; found {len(present)}: {', '.join(present)}"
    others = [str(k) for k in node if k != "id"]
    if not others:
        return f"{base}; found none"
    hinted = next((o for o in others if _close_match(o, kinds)), others[0])
    return f"{base}; unknown key '{hinted}'{_did_you_mean(hinted, kinds)}"


_TYPE_NAMES = {
    "string_type": "a string",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
}


def _message(err: ErrorDetails) -> str:
    kind = err["type"]
    ctx = err.get("ctx", {})
    got = _show(err.get("input"))
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return str(ctx["error"])
    if kind in _TYPE_NAMES:
        value = err.get("input")
        hint = ""
        if kind == "string_type" and isinstance(value, bool | int | float | date):
            hint = " (YAML read it as a value; quote it to make it text)"
        return f"expected {_TYPE_NAMES[kind]}, got {got}{hint}"
    if kind == "literal_error":
        return f"expected {ctx.get('expected', '?')}, got {got}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        words = {
            "greater_than": "greater than",
            "greater_than_equal": "at least",
            "less_than": "less than",
            "less_than_equal": "at most",
        }[kind]
        limit = next(iter(ctx.values()), "?")
        return f"must be {words} {_show(limit)}, got {got}"
    if kind in ("too_short", "string_too_short"):
        least = ctx.get("min_length", 1)
        return "must not be empty" if least == 1 else f"needs at least {least} items"
    if kind in ("too_long", "string_too_long"):
        return f"too long: at most {ctx.get('max_length')} allowed"
    if kind == "string_pattern_mismatch":
        return f"{got} does not match the pattern {ctx.get('pattern')}"
    message = err["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    return message[:1].lower() + message[1:]


def _show(value: Any) -> str:
    if value is _MISSING:
        return "nothing"
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def _close_match(word: str, candidates: Any) -> str | None:
    close = difflib.get_close_matches(word, [str(c) for c in candidates], n=1, cutoff=0.6)
    return close[0] if close else None


def _did_you_mean(word: str, candidates: Any) -> str:
    close = _close_match(word, candidates)
    return f" (did you mean '{close}'?)" if close else ""


def _allowed_keys(model: type[BaseModel] | None) -> list[str]:
    if model is None:
        return sorted(_all_spec_keys())
    return [info.alias or name for name, info in model.model_fields.items()]


def _all_spec_keys() -> set[str]:
    keys: set[str] = set()
    stack: list[type[BaseModel]] = [Spec]
    while stack:
        model = stack.pop()
        stack.extend(model.__subclasses__())
        keys.update(info.alias or name for name, info in model.model_fields.items())
    return keys


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    return str(value)
