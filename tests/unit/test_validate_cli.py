"""`herald validate` and `herald schema` as a user runs them (through `workers.cli.main`)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine.language.yamlpos import parse_yaml
from workers.cli import build_parser, main

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path("tests/fixtures/broken")
_EXPECT = re.compile(r"^#\s*expect:\s*(\d+):(\d+)\s", re.MULTILINE)
_LINE = re.compile(r"^(?P<path>[^:]+):(?P<line>\d+):(?P<col>\d+): \S")


@pytest.fixture(autouse=True)
def _at_repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("HERALD_RULES_DIR", raising=False)


def expected_locations(folder: Path) -> dict[str, str]:
    """`path:line:col` of each broken journey file's `# expect:` comment."""
    found: dict[str, str] = {}
    for path in sorted((folder / "journeys").glob("*.y*ml")):
        match = _EXPECT.search(path.read_text(encoding="utf-8"))
        if match:
            found[str(path)] = f"{path}:{match[1]}:{match[2]}"
    return found


def test_validate_sample_library(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "rules/"]) == 0
    out, err = capsys.readouterr()
    assert out == ""
    assert re.fullmatch(
        r"rules/ OK: \d+ journeys, \d+ segments, \d+ metrics, \d+ templates\n", err
    ), err


def test_validate_defaults_to_rules(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate"]) == 0
    assert capsys.readouterr().err.startswith("rules/ OK:")


@pytest.mark.parametrize("folder", [FIXTURES, Path("examples/broken")], ids=str)
def test_validate_broken_folder(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if not (REPO / folder / "journeys").is_dir():
        pytest.skip(f"{folder} not written yet")
    assert main(["validate", str(folder)]) == 1
    out, err = capsys.readouterr()
    lines = out.splitlines()
    expected = expected_locations(folder)
    assert len(lines) == len(expected)
    for line in lines:
        match = _LINE.match(line)
        assert match, line
        assert line.startswith(expected[match["path"]] + ": "), line
    assert err == f"{len(expected)} errors in {len(expected)} files\n"


@pytest.mark.skipif(
    not (REPO / "examples/broken/journeys").is_dir(), reason="examples/broken not written yet"
)
def test_validate_broken_examples_one_by_one(capsys: pytest.CaptureFixture[str]) -> None:
    for path, location in expected_locations(Path("examples/broken")).items():
        if "duplicate" in Path(path).read_text(encoding="utf-8").splitlines()[0]:
            continue  # needs its sibling; covered by test_loader
        assert main(["validate", path]) == 1, path
        out, _ = capsys.readouterr()
        assert out.startswith(location + ": "), (path, out)


def test_validate_missing_path(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "nowhere"]) == 1
    out, err = capsys.readouterr()
    assert out == "nowhere:1:1: no such file or folder\n"
    assert err == "1 error in 1 file\n"


def test_schema_is_json_and_validates_the_sample_journeys(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert schema["title"] == "Herald journey"
    assert {"journey", "trigger", "steps"} <= set(schema["required"])
    jsonschema: Any = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(schema)
    validator.check_schema(schema)
    for path in sorted(Path("rules/journeys").glob("*.yaml")):
        data = json.loads(json.dumps(parse_yaml(path.read_text(), str(path)).data, default=str))
        errors = [e.message for e in validator.iter_errors(data)]
        assert not errors, (path, errors)
    broken = parse_yaml((FIXTURES / "journeys/unknown_key_hint.yaml").read_text(), "x").data
    assert list(validator.iter_errors(broken))


@pytest.mark.parametrize("kind", ["segment", "metrics", "settings"])
def test_schema_of_other_files(kind: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema", "--kind", kind]) == 0
    assert json.loads(capsys.readouterr().out)["type"] == "object"


def test_exit_steps_need_their_kind_key_in_the_schema(capsys: pytest.CaptureFixture[str]) -> None:
    main(["schema"])
    defs = json.loads(capsys.readouterr().out)["$defs"]
    assert "exit" in defs["ExitStep"]["required"]
    assert defs["DateSpec"]["properties"]["at"]["default"] == "09:00"


def test_validate_does_not_import_the_streaming_stack() -> None:
    code = (
        "import sys\nfrom workers.cli import main\nrc = main(['validate', 'rules'])\n"
        "heavy = [m for m in ('faust', 'aiokafka', 'redis', 'aiohttp') if m in sys.modules]\n"
        "print(rc, heavy)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "0 []"


def test_other_commands_parse_their_arguments() -> None:
    parser = build_parser()
    args = parser.parse_args(
        ["simulate", "rules", "--events", "e.jsonl", "--profiles", "p.jsonl", "--trace"]
    )
    assert (args.path, args.events, args.profiles, args.trace, args.until) == (
        "rules",
        "e.jsonl",
        "p.jsonl",
        True,
        None,
    )
    args = parser.parse_args(
        ["emit", "cart_add", "--user", "u1", "--prop", "value=60", "--prop", "sku=A-1"]
    )
    assert (args.type, args.user, args.prop) == ("cart_add", "u1", [("value", 60), ("sku", "A-1")])
    assert parser.parse_args(["run", "--role", "processor"]).role == "processor"
    bench = parser.parse_args(["bench", "--events", "1000", "--no-embedded"])
    assert (bench.events, bench.embedded) == (1000, False)
    assert parser.parse_args(["demo", "--partitions", "4"]).partitions == 4
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "--role", "everything"])


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "validate" in capsys.readouterr().err
