"""`herald simulate` as a user runs it (via `workers.cli.main`): output shape, options, errors."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from workers.cli import main

REPO = Path(__file__).resolve().parents[2]
CONTRACT = ["simulate", "rules", "--events", "examples/events.jsonl"]
SPEC_KEYS = [
    "at",
    "user_id",
    "journey",
    "step",
    "channel",
    "to",
    "message_id",
    "variant",
    "subject",
    "body",
]
LOCATION = re.compile(r"^(?P<path>[^:\s]+):(?P<line>\d+):(?P<col>\d+): \S")
TRACE_LINE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\+00:00 \S+ ")

Capsys = pytest.CaptureFixture[str]


@pytest.fixture(autouse=True)
def _at_repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)


def run(argv: list[str], capsys: Capsys) -> tuple[int, list[dict[str, Any]], str]:
    """Exit status, stdout parsed line by line, stderr."""
    status = main(argv)
    out, err = capsys.readouterr()
    return status, [json.loads(line) for line in out.splitlines()], err


@pytest.fixture(scope="module")
def contract_lines() -> list[dict[str, Any]]:
    from workers.cmd_simulate import simulate_lines

    lines, _ = simulate_lines(REPO / "rules", REPO / "examples" / "events.jsonl")
    return lines


def test_contract_command(capsys: Capsys) -> None:
    status, lines, err = run(CONTRACT, capsys)
    assert status == 0
    assert err == ""
    assert len(lines) == 60
    for line in lines:
        assert list(line) == SPEC_KEYS
        assert isinstance(line["at"], str) and line["at"].endswith("+00:00")
        assert line["variant"] is None or isinstance(line["variant"], str)
        assert line["subject"] is None or isinstance(line["subject"], str)
        assert isinstance(line["body"], str)
    # every customer gets something; u99 (no profile, no address) gets nothing
    assert {line["user_id"] for line in lines} == {f"u{n}" for n in range(1, 14)}


def test_stdout_is_one_compact_json_object_per_line(capsys: Capsys) -> None:
    assert main(CONTRACT) == 0
    out = capsys.readouterr().out
    assert out.endswith("\n")
    for raw in out.splitlines():
        assert raw.startswith('{"at":')
        assert json.loads(raw)


@pytest.mark.parametrize(
    "until",
    [
        "2026-04-06T11:00:00Z",  # exactly the first message: included
        "2026-05-01T08:34:59Z",
        "2026-05-01T08:35:00Z",
        "2026-05-05T09:00:00+00:00",
        "2026-05-11T07:59:59Z",
        "2026-05-11T08:00:00Z",  # the last digests
        "2026-05-15T09:30:00Z",  # the very last line
    ],
)
def test_until_stops_the_clock_inclusively(
    capsys: Capsys, contract_lines: list[dict[str, Any]], until: str
) -> None:
    status, lines, _ = run([*CONTRACT, "--until", until], capsys)
    assert status == 0
    limit = until.replace("Z", "+00:00")
    expected = [line for line in contract_lines if line["at"] <= limit]
    assert lines == expected
    assert any(line["at"] == limit for line in lines) == any(
        line["at"] == limit for line in contract_lines
    )


def test_until_before_any_message(capsys: Capsys) -> None:
    status, lines, _ = run([*CONTRACT, "--until", "2026-04-06T10:59:59Z"], capsys)
    assert (status, lines) == (0, [])


def test_profiles_file_gives_the_same_output(
    capsys: Capsys, contract_lines: list[dict[str, Any]]
) -> None:
    argv = [*CONTRACT, "--profiles", "examples/profiles.jsonl"]
    status, lines, _ = run(argv, capsys)
    assert status == 0
    assert lines == contract_lines


SIGNUP_ONLY = """
journey: hello
trigger: {event: signup}
steps:
  - send: {channel: email, subject: "Hi {{ profile.first_name }}", body: "Welcome"}
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_profiles_supply_addresses(tmp_path: Path, capsys: Capsys) -> None:
    journey = write(tmp_path / "rules" / "journeys" / "hello.yaml", SIGNUP_ONLY)
    events = write(
        tmp_path / "events.jsonl",
        '{"event_id": "s1", "type": "signup", "user_id": "a", '
        '"timestamp": "2026-05-01T10:00:00Z"}\n',
    )
    profiles = write(
        tmp_path / "profiles.jsonl",
        '{"user_id": "a", "traits": {"email": "a@example.com", "first_name": "Ada"}}\n',
    )
    status, lines, _ = run(["simulate", str(journey), "--events", str(events)], capsys)
    assert (status, lines) == (0, [])  # no address: suppressed, not printed
    argv = ["simulate", str(journey), "--events", str(events), "--profiles", str(profiles)]
    status, lines, _ = run(argv, capsys)
    assert status == 0
    assert [(ln["to"], ln["subject"], ln["at"]) for ln in lines] == [
        ("a@example.com", "Hi Ada", "2026-05-01T10:00:00+00:00")
    ]


@pytest.mark.parametrize(
    ("path", "journeys", "count"),
    [
        ("rules/journeys/welcome_series.yaml", {"welcome_series"}, 10),
        ("rules/journeys/weekly_digest.yaml", {"weekly_digest"}, 10),  # its segment is found
        ("rules/journeys/cart_abandonment.yaml", {"cart_abandonment"}, 5),
        ("rules/journeys", None, 60),  # a folder of journey files
    ],
)
def test_one_journey_file_as_path(
    capsys: Capsys,
    contract_lines: list[dict[str, Any]],
    path: str,
    journeys: set[str] | None,
    count: int,
) -> None:
    status, lines, err = run(["simulate", path, "--events", "examples/events.jsonl"], capsys)
    assert status == 0, err
    assert len(lines) == count
    if journeys is not None:
        assert {line["journey"] for line in lines} == journeys
        assert lines == [line for line in contract_lines if line["journey"] in journeys]


def test_invalid_rules_exit_1_with_locations(capsys: Capsys) -> None:
    status = main(["simulate", "examples/broken", "--events", "examples/events.jsonl"])
    out, err = capsys.readouterr()
    assert status == 1
    assert out == ""
    problems = err.splitlines()
    assert len(problems) > 10
    for problem in problems:
        match = LOCATION.match(problem)
        assert match, problem
        assert match["path"].startswith("examples/broken/")


def test_invalid_journey_file_names_line_and_column(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Capsys
) -> None:
    write(tmp_path / "rules" / "journeys" / "bad.yaml", "journey: bad\ntrigger: {event: go}\n")
    write(
        tmp_path / "rules" / "journeys" / "typo.yaml",
        "journey: typo\ntrigger: {event: go}\nstepz: []\n",
    )
    write(tmp_path / "events.jsonl", "")
    monkeypatch.chdir(tmp_path)
    status = main(["simulate", "rules", "--events", "events.jsonl"])
    out, err = capsys.readouterr()
    assert (status, out) == (1, "")
    assert "rules/journeys/typo.yaml:3:1: unknown key 'stepz' (did you mean 'steps'?)" in err
    assert any(line.startswith("rules/journeys/bad.yaml:") for line in err.splitlines())
    assert all(LOCATION.match(line) for line in err.splitlines()), err


def test_malformed_events_exit_1_naming_file_and_line(tmp_path: Path, capsys: Capsys) -> None:
    events = write(
        tmp_path / "events.jsonl",
        '{"event_id": "ok", "type": "signup", "user_id": "a", '
        '"timestamp": "2026-05-01T10:00:00Z"}\n'
        "\n"
        "{not json\n"
        '{"user_id": "a", "timestamp": "2026-05-01T11:00:00Z"}\n'
        '{"type": "signup", "user_id": "a", "timestamp": "yesterday"}\n',
    )
    status = main(["simulate", "rules", "--events", str(events)])
    out, err = capsys.readouterr()
    assert (status, out) == (1, "")
    lines = err.splitlines()
    assert [line.split(": ", 1)[0] for line in lines] == [
        f"{events}:3",
        f"{events}:4",
        f"{events}:5",
    ]
    assert "malformed JSON" in lines[0]


def test_malformed_profiles_exit_1_naming_file_and_line(tmp_path: Path, capsys: Capsys) -> None:
    profiles = write(tmp_path / "profiles.jsonl", '{"user_id": "a", "traits": {}}\n["x"]\n')
    argv = [*CONTRACT, "--profiles", str(profiles)]
    status = main(argv)
    out, err = capsys.readouterr()
    assert (status, out) == (1, "")
    assert err.startswith(f"{profiles}:2: ")


def test_missing_events_file_exits_1(capsys: Capsys) -> None:
    status = main(["simulate", "rules", "--events", "examples/no-such-file.jsonl"])
    out, err = capsys.readouterr()
    assert (status, out) == (1, "")
    assert "no-such-file.jsonl" in err


def test_trace_goes_to_stderr(capsys: Capsys, contract_lines: list[dict[str, Any]]) -> None:
    status, lines, err = run([*CONTRACT, "--trace"], capsys)
    assert status == 0
    assert lines == contract_lines  # stdout is unchanged by tracing
    trace = err.splitlines()
    assert len(trace) > 200
    assert all(TRACE_LINE.match(line) for line in trace), [
        line for line in trace if not TRACE_LINE.match(line)
    ][:3]
    text = "\n".join(trace)
    assert (
        "2026-05-04T03:15:00+00:00 u3 cart_abandonment steps.1: "
        "quiet hours: deferred to 2026-05-04T12:00:00+00:00"
    ) in text
    assert "2026-05-06T13:00:00+00:00 u3 birthday_greeting steps.1: suppressed sms: no consent" in (
        text
    )
    assert "u9 browse_abandonment steps.1: suppressed email: frequency cap" in text
    assert "u9 browse_abandonment : trigger ignored: a run is active" in text


FAILING = """
journey: failing
trigger: {event: signup}
steps:
  - send: {channel: email, subject: "Hi", body: "{{ profile.no_such_trait }}"}
  - send: {channel: email, subject: "Still", body: "here"}
"""


def test_failed_sends_are_reported_and_the_run_still_exits_0(
    tmp_path: Path, capsys: Capsys
) -> None:
    journey = write(tmp_path / "rules" / "journeys" / "failing.yaml", FAILING)
    events = write(
        tmp_path / "events.jsonl",
        '{"event_id": "s1", "type": "signup", "user_id": "a", '
        '"timestamp": "2026-05-01T10:00:00Z", "traits": {"email": "a@example.com"}}\n',
    )
    status, lines, err = run(["simulate", str(journey), "--events", str(events)], capsys)
    assert status == 0
    assert [(ln["step"], ln["body"]) for ln in lines] == [("steps.1", "here")]
    [failure] = err.splitlines()
    assert failure.startswith("2026-05-01T10:00:00+00:00 FAILED a failing steps.0: template:")
    assert "no_such_trait" in failure
