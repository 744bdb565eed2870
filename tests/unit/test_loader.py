"""The rules loader: the sample library loads, and every broken file is reported where it's wrong.

Broken fixtures carry their expectation in a first-lines comment, `# expect: LINE:COL substring`;
a file without one is a valid companion (e.g. the first of two files sharing a journey id).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import time, timedelta
from pathlib import Path

import pytest

from engine.errors import Problem, RulesError
from engine.language.loader import (
    journey_version,
    load_journey_text,
    load_rules,
    load_rules_text,
)
from engine.language.steps import SplitStep, WaitStep
from engine.language.triggers import DateTrigger
from engine.language.yamlpos import parse_yaml
from engine.templates import TemplateStore

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path("tests/fixtures/broken")
EXAMPLES = Path("examples/broken")
_EXPECT = re.compile(r"^#\s*expect:\s*(\d+):(\d+)\s+(.+?)\s*$", re.MULTILINE)


@pytest.fixture(autouse=True)
def _at_repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """Paths in problems are relative to the working directory, as `herald validate` prints."""
    monkeypatch.chdir(REPO)


@dataclass(frozen=True)
class Expect:
    line: int
    col: int
    text: str

    def matches(self, problem: Problem) -> bool:
        return (problem.line, problem.col) == (self.line, self.col) and self.text in problem.message


def expectation(path: Path) -> Expect | None:
    head = "\n".join(path.read_text(encoding="utf-8").splitlines()[:5])
    match = _EXPECT.search(head)
    return Expect(int(match[1]), int(match[2]), match[3]) if match else None


def journey_files(folder: Path) -> list[Path]:
    root = REPO / folder / "journeys"
    if not root.is_dir():
        return []
    return sorted(p.relative_to(REPO) for p in root.iterdir() if p.suffix in (".yaml", ".yml"))


def problems_of(target: Path) -> list[Problem]:
    try:
        load_rules(target)
    except RulesError as exc:
        return exc.problems
    return []


def assert_reported(problems: list[Problem], path: Path, expect: Expect | None) -> None:
    mine = [p for p in problems if p.path == str(path)]
    shown = "\n".join(str(p) for p in mine) or "(no problems)"
    if expect is None:
        assert not mine, f"{path} should be valid, got:\n{shown}"
        return
    assert len(mine) == 1, f"{path}: expected exactly one problem, got:\n{shown}"
    assert expect.matches(mine[0]), f"{path}: expected {expect}, got:\n{shown}"


# --------------------------------------------------------------------------- sample library


def test_sample_library_loads_without_problems() -> None:
    rules = load_rules("rules")
    assert len(rules.journeys) >= 15
    assert rules.segments and rules.metrics and rules.templates.names()
    assert set(rules.versions) == set(rules.journeys)
    assert all(re.fullmatch(r"[0-9a-f]{12}", v) for v in rules.versions.values())
    for journey_id, source in rules.sources.items():
        assert source.startswith("rules/journeys/"), (journey_id, source)


def test_one_journey_file_is_checked_against_its_rules_folder() -> None:
    path = next(p for p in journey_files(Path("rules")))
    rules = load_rules(path)
    assert len(rules.journeys) == 1
    assert rules.segments == load_rules("rules").segments


# --------------------------------------------------------------------------- broken fixtures

FIXTURE_FILES = journey_files(FIXTURES)


def test_fixtures_cover_many_kinds_of_error() -> None:
    expected = [e for e in map(expectation, FIXTURE_FILES) if e is not None]
    assert len(expected) >= 25


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.stem)
def test_broken_fixture_reported_in_folder(path: Path, folder_problems: list[Problem]) -> None:
    assert_reported(folder_problems, path, expectation(REPO / path))


@pytest.mark.parametrize(
    "path", [p for p in FIXTURE_FILES if "duplicate_id" not in p.stem], ids=lambda p: p.stem
)
def test_broken_fixture_reported_alone(path: Path) -> None:
    assert_reported(problems_of(path), path, expectation(REPO / path))


@pytest.fixture(scope="module")
def folder_problems() -> list[Problem]:
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(REPO)
        problems = problems_of(FIXTURES)
    known = {str(p) for p in FIXTURE_FILES}
    assert {p.path for p in problems} <= known
    return problems


# --------------------------------------------------------------------------- examples/broken

EXAMPLE_FILES = journey_files(EXAMPLES)


@pytest.mark.skipif(not EXAMPLE_FILES, reason="examples/broken has no journeys yet")
@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.stem)
def test_broken_example_reported(path: Path) -> None:
    expect = expectation(REPO / path)
    problems = problems_of(path)
    if expect is not None and "duplicate" in expect.text and not problems:
        problems = problems_of(path.parent)  # needs its sibling with the same id
    assert_reported(problems, path, expect)


# --------------------------------------------------------------------------- behaviour

CART = """\
journey: cart
trigger: {event: cart_add, when: "event.properties.value >= 50"}
steps:
  - wait: 30m
  - send: {channel: email, template: cart_reminder}
"""


def test_every_problem_of_a_file_is_reported_at_once() -> None:
    text = "journey: Bad\nenabled: maybe\ntrigger: {event: x}\nsteps:\n  - wait: 5x\n  - wiat: 1d\n"
    with pytest.raises(RulesError) as info:
        load_rules_text({"j.yaml": text})
    assert [(p.line, p.col) for p in info.value.problems] == [(1, 10), (2, 10), (5, 11), (6, 5)]
    assert "did you mean 'wait'" in str(info.value.problems[-1])
    assert str(info.value).splitlines()[0].startswith("j.yaml:1:10: invalid id 'Bad'")


def test_clock_times_stay_strings_and_yaml_booleans_follow_yaml_1_1() -> None:
    doc = parse_yaml("a: 10:30\nb: 09:00\nc: 1:30:00\nd: yes\ne: off\nf: 2.5\ng: 0x1f\n", "t")
    assert doc.data == {
        "a": "10:30",
        "b": "09:00",
        "c": "1:30:00",
        "d": True,
        "e": False,
        "f": 2.5,
        "g": 31,
    }
    journey = load_journey_text(
        "journey: q\ntrigger: {event: x}\nquiet_hours: {start: 22:00, end: 8:00}\n"
        "steps: [{wait: {until: 9:30}}]\n"
    )
    assert journey.quiet_hours is not None
    assert (journey.quiet_hours.start, journey.quiet_hours.end) == (time(22), time(8))
    step = journey.steps[0]
    assert isinstance(step, WaitStep) and not isinstance(step.wait, timedelta)
    assert step.wait.until == time(9, 30)


def test_positions_of_keys_and_values() -> None:
    doc = parse_yaml("# c\nsteps:\n  - send: {channel: email}\n", "t")
    assert doc.keys[("steps",)] == (2, 1)
    assert doc.values[("steps", 0)] == (3, 5)
    assert doc.keys[("steps", 0, "send", "channel")] == (3, 12)
    assert doc.values[("steps", 0, "send", "channel")] == (3, 21)
    assert doc.value_pos(("steps", 0, "send", "missing", 3)) == (3, 11)


def test_keys_are_strings_and_merge_keys_work() -> None:
    doc = parse_yaml("base: &b {on: 1, x: 2}\nm:\n  <<: *b\n  x: 3\n", "t")
    assert doc.data["base"] == {"on": 1, "x": 2}
    assert doc.data["m"] == {"x": 3, "on": 1}
    assert doc.keys[("m", "x")] == (4, 3)
    assert not doc.problems


def test_wait_reports_the_member_the_author_meant() -> None:
    for text, where, words in (
        ("steps: [{wait: 3 days}]", (3, 16), "invalid duration '3 days'"),
        ("steps: [{wait: {until: '26:00'}}]", (3, 24), "invalid time '26:00'"),
        ("steps: [{wait: {untill: '09:00'}}]", (3, 17), "unknown key 'untill'"),
    ):
        with pytest.raises(RulesError) as info:
            load_rules_text({"j.yaml": f"journey: w\ntrigger: {{event: x}}\n{text}\n"})
        [problem] = info.value.problems
        assert (problem.line, problem.col) == where and words in problem.message, problem


def test_versions_are_stable_and_change_with_content() -> None:
    first = load_rules_text({"a.yaml": CART}).versions["cart"]
    again = load_rules_text({"other/path.yaml": "# a comment\n" + CART}).versions["cart"]
    edited = load_rules_text({"a.yaml": CART.replace("30m", "45m")}).versions["cart"]
    assert first == again != edited
    assert first == journey_version(parse_yaml(CART, "x").data)


def test_references_are_checked_only_against_what_was_given() -> None:
    text = "journey: s\ntrigger: {schedule: '0 9 * * 1', segment: vips}\nsteps: [{exit: {}}]\n"
    assert "s" in load_rules_text({"s.yaml": text}).journeys
    with pytest.raises(RulesError, match=r"s.yaml:2:43: unknown segment 'vips' \(did you mean"):
        load_rules_text({"s.yaml": text}, segments={"v.yaml": "segment: vip\nwhen: 'true'\n"})
    with pytest.raises(RulesError, match="unknown template 'cart_reminder'"):
        load_rules_text({"a.yaml": CART}, templates=TemplateStore.empty())


def test_inline_and_value_templates_compile_at_load_time() -> None:
    text = (
        "journey: t\ntrigger: {event: x}\nsteps:\n"
        "  - send: {channel: sms, body: 'Hi {{ profile.name '}\n"
        "  - update_profile: {set: {code: '{% if %}'}}\n"
    )
    with pytest.raises(RulesError) as info:
        load_rules_text({"t.yaml": text})
    assert [(p.line, p.col) for p in info.value.problems] == [(4, 32), (5, 34)]
    assert all("invalid template" in p.message for p in info.value.problems)


def test_duplicate_segment_ids_and_segment_problems() -> None:
    segments = {
        "a.yaml": "segment: vip\nwhen: 'true'\n",
        "b.yaml": "segment: vip\nwhen: 'profile.x =='\n",
        "c.yaml": "segment: vip\nwhen: 'false'\n",
    }
    with pytest.raises(RulesError) as info:
        load_rules_text({}, segments=segments)
    assert [str(p)[:22] for p in info.value.problems] == [
        "b.yaml:2:7: invalid ex",
        "c.yaml:1:10: duplicate",
    ]
    assert "already defined in a.yaml" in info.value.problems[1].message


def test_split_arm_names_follow_the_spec_and_must_be_unique() -> None:
    text = (
        "journey: s\ntrigger: {event: x}\nsteps:\n  - split:\n"
        "      - {name: A, weight: 1}\n      - {name: control, weight: 1}\n"
    )
    step = load_journey_text(text).steps[0]
    assert isinstance(step, SplitStep) and [a.name for a in step.split] == ["A", "control"]
    with pytest.raises(RulesError, match=r"j.yaml:6:16: split arm name 'A' is used twice"):
        load_rules_text({"j.yaml": text.replace("control", "A")})


def test_date_offset_is_signed_whole_days() -> None:
    text = "journey: b\ntrigger: {date: {attribute: birthday, offset: -3d}}\nsteps: [{exit: {}}]\n"
    trigger = load_journey_text(text).trigger
    assert isinstance(trigger, DateTrigger) and trigger.date.offset == timedelta(days=-3)


def test_paths_are_shown_relative_to_the_working_directory() -> None:
    absolute = REPO / FIXTURES / "journeys" / "bad_id.yaml"
    [problem] = problems_of(absolute)
    assert problem.path == "tests/fixtures/broken/journeys/bad_id.yaml"


def test_missing_paths_and_non_rules_folders() -> None:
    assert [str(p) for p in problems_of(Path("no/such/rules"))] == [
        "no/such/rules:1:1: no such file or folder"
    ]
    assert "not a rules folder" in problems_of(Path("tests"))[0].message


def test_empty_file_is_a_problem() -> None:
    with pytest.raises(RulesError, match=r"e.yaml:1:1: empty file"):
        load_rules_text({"e.yaml": "# nothing here\n"})


def test_scalars_yaml_typed_where_text_was_meant_get_a_quoting_hint() -> None:
    text = "journey: x\nname: 2026-05-01\ntrigger: {event: yes}\nsteps: [{exit: }]\n"
    with pytest.raises(RulesError) as info:
        load_rules_text({"j.yaml": text})
    assert [str(p) for p in info.value.problems] == [
        "j.yaml:2:7: expected a string, got 2026-05-01 (YAML read it as a value; quote it to "
        "make it text)",
        "j.yaml:3:18: expected a string, got true (YAML read it as a value; quote it to make it "
        "text)",
    ]
