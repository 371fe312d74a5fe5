"""The flag model and its validation: the seeds' shape parses, round-trips, and every
bad input is reported with the file, the line and the problem."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from flags.errors import FlagsFileError, FlagValidationError
from flags.model import Constraint, Flag, Operator, ProgressiveConfig, Strategy
from flags.parse import flag_from_dict, parse_constraint, parse_flags_text
from flags.store import render

SEED_TEXT = """{
  "hybrid_rag_enabled": {
    "enabled": true,
    "rollout_strategy": "progressive",
    "rollout_percentage": 10.0,
    "progressive_config": {
      "initial_percentage": 0,
      "end_percentage": 100,
      "start_date": "2025-10-23T09:00:00Z",
      "end_date": "2025-10-30T09:00:00Z"
    }
  }
}
"""

START = datetime(2025, 10, 23, 9, tzinfo=UTC)
END = datetime(2025, 10, 30, 9, tzinfo=UTC)


def make_flag(**overrides) -> Flag:
    """A valid percentage flag; override any field."""
    fields = dict(
        name="vector_search_enabled",
        enabled=True,
        rollout_strategy=Strategy.PERCENTAGE,
        rollout_percentage=5.0,
    )
    fields.update(overrides)
    return Flag(**fields)


def make_body(**overrides) -> dict:
    """A valid flag as flags.json holds it (the seeds' keys); override or add keys."""
    body = {
        "enabled": True,
        "rollout_strategy": "progressive",
        "rollout_percentage": 10.0,
        "progressive_config": {
            "initial_percentage": 0,
            "end_percentage": 100,
            "start_date": "2025-10-23T09:00:00Z",
            "end_date": "2025-10-30T09:00:00Z",
        },
    }
    body.update(overrides)
    return body


def flags_text(bad_body: dict, bad_name: str = "hybrid_rag_enabled") -> str:
    """A two-flag file, a valid flag first and `bad_body` second, so a line that points
    at the wrong flag is caught."""
    return json.dumps({"vector_search_enabled": make_body(), bad_name: bad_body}, indent=2) + "\n"


def line_of(text: str, needle: str, after: str | None = None) -> int:
    """1-based line of the first line containing `needle` (after the line containing `after`)."""
    lines = text.splitlines()
    start = line_of(text, after) if after else 0
    for number, line in enumerate(lines[start:], start + 1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in the text")


def file_error(tmp_path: Path, text: str) -> FlagsFileError:
    """Write `text` as flags.json, parse it, and return the error it must raise."""
    path = tmp_path / "flags.json"
    path.write_text(text)
    with pytest.raises(FlagsFileError) as info:
        parse_flags_text(path.read_text(), path)
    return info.value


def assert_names(err: FlagsFileError, path: Path, line: int | None, *fragments: str) -> None:
    """The error names the file, the line and the problem, in the message too."""
    assert err.path == path
    assert err.line == line
    where = f"{path}:{line}: " if line else f"{path}: "
    assert str(err).startswith(where), str(err)
    for fragment in fragments:
        assert fragment in err.problem, err.problem


# -- the seeds' shape ----------------------------------------------------------------


def test_seed_example_parses_into_a_progressive_flag():
    """The seeds' `hybrid_rag_enabled` entry parses with every field read as written."""
    flags = parse_flags_text(SEED_TEXT, "flags.json")

    assert list(flags) == ["hybrid_rag_enabled"]
    flag = flags["hybrid_rag_enabled"]
    assert flag.enabled is True
    assert flag.rollout_strategy is Strategy.PROGRESSIVE
    assert flag.rollout_percentage == 10.0
    assert flag.progressive_config == ProgressiveConfig(0.0, 100.0, START, END, None)
    assert flag.progressive_config.start_date.utcoffset().total_seconds() == 0
    assert flag.constraints == () and flag.extra == {} and flag.audit_id is None
    assert flag.bucket_group == "hybrid_rag_enabled"


def test_seed_example_is_written_back_in_the_seeds_shape():
    """Rendering the parsed seed example gives the seeds' keys, values and date format back."""
    flags = parse_flags_text(SEED_TEXT, "flags.json")

    assert json.loads(render(flags)) == json.loads(SEED_TEXT)


def test_defaults_of_a_minimal_flag():
    """A flag with only `enabled` is an `all` flag at 100% bucketed on targetingKey."""
    flag = flag_from_dict("f", {"enabled": False})

    assert flag == Flag(name="f", enabled=False)
    assert (flag.rollout_strategy, flag.rollout_percentage, flag.stickiness) == (Strategy.ALL, 100.0, "targetingKey")


def test_percentage_flag_without_a_percentage_defaults_to_zero():
    """A percentage flag that does not say how far it is rolled out is rolled out to nobody."""
    assert flag_from_dict("f", {"enabled": True, "rollout_strategy": "percentage"}).rollout_percentage == 0.0


# -- round trip and extras ------------------------------------------------------------


@pytest.mark.parametrize(
    "flag",
    [
        make_flag(),
        make_flag(name="all_on", rollout_strategy=Strategy.ALL, rollout_percentage=100.0, enabled=False),
        make_flag(
            name="hybrid_rag_enabled",
            rollout_strategy=Strategy.PROGRESSIVE,
            rollout_percentage=12.5,
            progressive_config=ProgressiveConfig(0.0, 100.0, START, END, 12.5),
            constraints=(
                Constraint("agent", Operator.IN, ("Builder", "Deploy", "QA")),
                Constraint("region", Operator.STR_STARTS_WITH, ("eu-",), case_insensitive=True, inverted=True),
            ),
            stickiness="sessionId",
            group_id="hybrid_rag",
            description="the hybrid retriever",
            audit_id="20251023T090000000000Z-abc123",
            extra={"owner": "retrieval-team", "tags": ["p1", {"nested": True}], "legacy_weight": 0.5},
        ),
        make_flag(progressive_config=ProgressiveConfig(5.0, 25.0, START, END)),
    ],
    ids=["percentage", "all-disabled", "everything", "percentage-with-progressive-config"],
)
def test_to_dict_round_trips_through_the_parser(flag):
    """`Flag.to_dict()` parsed back gives an equal flag."""
    assert flag_from_dict(flag.name, flag.to_dict()) == flag
    assert parse_flags_text(render({flag.name: flag}).decode(), "flags.json") == {flag.name: flag}


def test_dates_with_an_offset_round_trip_as_the_same_instant():
    """A date written with an offset is kept as the same instant and written back in UTC."""
    body = make_body()
    body["progressive_config"]["start_date"] = "2025-10-23T11:00:00+02:00"
    flag = flag_from_dict("f", body)

    assert flag.progressive_config.start_date == START
    assert flag.to_dict()["progressive_config"]["start_date"] == "2025-10-23T09:00:00Z"
    assert flag_from_dict("f", flag.to_dict()) == flag


def test_unknown_extra_keys_are_preserved():
    """Keys rolloutd does not use are kept verbatim and written back after its own."""
    extra = {"owner": "retrieval-team", "jira": "RAG-5", "metadata": {"phase": "5.3", "risk": ["low"]}}
    flag = flag_from_dict("hybrid_rag_enabled", make_body(**extra))

    assert flag.extra == extra
    written = flag.to_dict()
    assert {k: written[k] for k in extra} == extra
    assert list(written)[:3] == ["enabled", "rollout_strategy", "rollout_percentage"]


@pytest.mark.parametrize(
    ("key", "meant"),
    [
        ("rollout_percentag", "rollout_percentage"),
        ("enabeld", "enabled"),
        ("rollout_stratgy", "rollout_strategy"),
        ("progresive_config", "progressive_config"),
        ("constraint", "constraints"),
    ],
)
def test_misspelled_known_keys_are_rejected_with_a_suggestion(tmp_path, key, meant):
    """A key one typo away from a known one is an error saying "did you mean", on its line."""
    body = make_body()
    body[key] = body.pop(meant, 5)
    text = flags_text(body)

    err = file_error(tmp_path, text)

    assert_names(err, tmp_path / "flags.json", line_of(text, f'"{key}"'), f"did you mean {meant!r}")


def test_misspelled_nested_key_is_rejected_with_a_suggestion():
    """Inside progressive_config (ours alone) a typo also gets "did you mean"."""
    body = make_body()
    body["progressive_config"]["end_dat"] = body["progressive_config"].pop("end_date")

    with pytest.raises(FlagValidationError, match="did you mean 'end_date'") as info:
        flag_from_dict("f", body)
    assert info.value.field == "progressive_config.end_dat"


def test_unknown_nested_key_is_rejected():
    """progressive_config has no room for other tools' keys, so an unknown one is an error."""
    body = make_body()
    body["progressive_config"]["owner"] = "x"

    with pytest.raises(FlagValidationError, match="unknown key"):
        flag_from_dict("f", body)


# -- bad files: file, line, problem ---------------------------------------------------------


def test_invalid_json_names_file_line_and_problem(tmp_path):
    """A missing comma is reported at the line where the parser stopped."""
    text = '{\n  "f": {\n    "enabled": true\n    "rollout_strategy": "all"\n  }\n}\n'

    err = file_error(tmp_path, text)

    assert_names(err, tmp_path / "flags.json", 4, "not valid JSON", "delimiter")


def test_truncated_file_is_invalid_json(tmp_path):
    """A file cut short (what a non-atomic writer leaves) names its last line."""
    text = flags_text(make_body())[:-40]

    err = file_error(tmp_path, text)

    assert_names(err, tmp_path / "flags.json", text.count("\n") + 1, "not valid JSON")


@pytest.mark.parametrize("text", ["", "\n", "   \n\t\n"])
def test_empty_file_names_the_file(tmp_path, text):
    """An empty (or blank) file is an error naming the file, with no line to point at."""
    err = file_error(tmp_path, text)

    assert_names(err, tmp_path / "flags.json", None, "empty")


@pytest.mark.parametrize("text", ["[]\n", '"flags"\n', "null\n"])
def test_top_level_must_be_an_object(tmp_path, text):
    """A valid JSON document that is not an object of flags is rejected at line 1."""
    err = file_error(tmp_path, text)

    assert_names(err, tmp_path / "flags.json", 1, "expected a JSON object")


def test_duplicate_flag_names_the_second_occurrence(tmp_path):
    """A flag defined twice is an error at the second definition (JSON would keep the last)."""
    text = (
        '{\n  "hybrid_rag_enabled": {"enabled": true},\n  "vector_search_enabled": {"enabled": true},\n'
        '  "hybrid_rag_enabled": {"enabled": false}\n}\n'
    )

    err = file_error(tmp_path, text)

    assert_names(err, tmp_path / "flags.json", 4, "duplicate key 'hybrid_rag_enabled'")


def test_duplicate_key_inside_the_first_flag_names_its_line(tmp_path):
    """A key repeated inside a flag is an error at the repeat."""
    text = '{\n  "f": {\n    "enabled": true,\n    "enabled": false\n  },\n  "g": {"enabled": true}\n}\n'

    err = file_error(tmp_path, text)

    assert_names(err, tmp_path / "flags.json", 4, "duplicate key 'enabled'")


def test_duplicate_key_inside_a_later_flag_names_its_line(tmp_path):
    """A key repeated inside the second flag is reported at the repeat, not at its first copy."""
    text = '{\n  "f": {\n    "enabled": true\n  },\n  "g": {\n    "enabled": true,\n    "enabled": false\n  }\n}\n'

    err = file_error(tmp_path, text)

    assert_names(err, tmp_path / "flags.json", 7, "duplicate key 'enabled'")


def test_percentage_over_100_names_its_line(tmp_path):
    """rollout_percentage 140 is rejected at its own line, saying the allowed range."""
    text = flags_text(make_body(rollout_percentage=140))

    err = file_error(tmp_path, text)

    assert_names(
        err,
        tmp_path / "flags.json",
        line_of(text, "140"),
        "hybrid_rag_enabled",
        "rollout_percentage",
        "140 is outside 0-100",
    )


@pytest.mark.parametrize("value", [-1, 100.5, "10", True, None, float("nan")], ids=repr)
def test_percentage_must_be_a_number_from_0_to_100(value):
    """Negative, over 100, string, boolean, null and NaN percentages are all rejected."""
    with pytest.raises(FlagValidationError) as info:
        flag_from_dict("f", make_body(rollout_percentage=value))
    assert info.value.field == "rollout_percentage"


def test_unknown_strategy_names_its_line(tmp_path):
    """An unknown rollout_strategy is rejected at its line, listing the strategies there are."""
    text = flags_text(make_body(rollout_strategy="gradual"))

    err = file_error(tmp_path, text)

    assert_names(
        err,
        tmp_path / "flags.json",
        line_of(text, '"gradual"'),
        "'gradual' is not one of",
        "all, percentage, progressive",
    )


def test_enabled_must_be_a_boolean(tmp_path):
    """`"enabled": "yes"` is rejected at its line rather than read as truthy."""
    text = flags_text(make_body(enabled="yes"))

    err = file_error(tmp_path, text)

    assert_names(err, tmp_path / "flags.json", line_of(text, '"yes"'), "expected true or false")


def test_missing_enabled_names_the_flags_own_line(tmp_path):
    """A flag without `enabled` is reported at that flag, not at a later flag's `enabled`."""
    text = json.dumps({"a": {"rollout_strategy": "all"}, "b": {"enabled": True}}, indent=2)

    err = file_error(tmp_path, text)

    assert_names(err, tmp_path / "flags.json", line_of(text, '"a"'), "missing")


# Nested fields (progressive_config.*, constraints[i].*) are located at their enclosing
# key today. These tests hold that floor: the line is inside the right flag, at or before
# the offending key.

NESTED_CASES = {
    "end_date_before_start": (
        {"start_date": "2025-10-30T09:00:00Z", "end_date": "2025-10-23T09:00:00Z"},
        '"end_date"',
        ("is not after start_date",),
    ),
    "end_date_equal_to_start": (
        {"end_date": "2025-10-23T09:00:00Z"},
        '"end_date"',
        ("is not after start_date",),
    ),
    "naive_start_date": (
        {"start_date": "2025-10-23T09:00:00"},
        '"start_date"',
        ("has no time zone", "add Z"),
    ),
    "unparseable_end_date": (
        {"end_date": "next tuesday"},
        '"end_date"',
        ("expected an ISO-8601 time",),
    ),
    "current_percentage_over_100": (
        {"current_percentage": 140},
        '"current_percentage"',
        ("140 is outside 0-100",),
    ),
}


def nested_text(case: str) -> tuple[str, str, tuple[str, ...]]:
    progressive, needle, fragments = NESTED_CASES[case]
    body = make_body()
    body["progressive_config"].update(progressive)
    return flags_text(body), needle, fragments


@pytest.mark.parametrize("case", list(NESTED_CASES))
def test_bad_progressive_config_names_file_flag_and_problem(tmp_path, case):
    """A bad date or range in progressive_config is reported inside the flag, at or before the key."""
    text, needle, fragments = nested_text(case)

    err = file_error(tmp_path, text)

    key_line = line_of(text, needle, after='"hybrid_rag_enabled"')
    assert line_of(text, '"hybrid_rag_enabled"') <= err.line <= key_line
    assert_names(err, tmp_path / "flags.json", err.line, "hybrid_rag_enabled", "progressive_config", *fragments)


@pytest.mark.parametrize("case", ["end_date_before_start", "naive_start_date"])
def test_bad_progressive_field_names_its_own_line(tmp_path, case):
    """A bad date in progressive_config is reported at the date's own line."""
    text, needle, fragments = nested_text(case)

    err = file_error(tmp_path, text)

    assert_names(err, tmp_path / "flags.json", line_of(text, needle, after='"hybrid_rag_enabled"'), *fragments)


def test_naive_date_is_rejected_with_a_remedy():
    """A date without a time zone is rejected, saying to add Z or an offset."""
    body = make_body()
    body["progressive_config"]["end_date"] = "2025-10-30T09:00:00"

    with pytest.raises(FlagValidationError, match="has no time zone; add Z") as info:
        flag_from_dict("f", body)
    assert info.value.field == "progressive_config.end_date"


def test_progressive_flag_needs_its_config():
    """A progressive flag without progressive_config is rejected."""
    body = make_body()
    del body["progressive_config"]

    with pytest.raises(FlagValidationError, match="needs an object") as info:
        flag_from_dict("f", body)
    assert info.value.field == "progressive_config"


def test_unknown_operator_names_file_flag_and_problem(tmp_path):
    """An unknown constraint operator is rejected inside its flag, listing the operators there are."""
    text = flags_text(make_body(constraints=[{"context_name": "agent", "operator": "LIKE", "values": ["QA"]}]))

    err = file_error(tmp_path, text)

    assert line_of(text, '"hybrid_rag_enabled"') <= err.line <= line_of(text, '"LIKE"')
    assert_names(
        err,
        tmp_path / "flags.json",
        err.line,
        "constraints[0].operator",
        "operator 'LIKE' is not one of",
        "IN, NOT_IN, STR_EQ",
    )


def test_unknown_operator_names_its_own_line(tmp_path):
    """An unknown constraint operator is reported at the operator's line."""
    text = flags_text(make_body(constraints=[{"context_name": "agent", "operator": "LIKE", "values": ["QA"]}]))

    err = file_error(tmp_path, text)

    assert_names(err, tmp_path / "flags.json", line_of(text, '"LIKE"'), "operator 'LIKE'")


def test_unknown_operator_in_shorthand_is_rejected():
    """The shorthand checks its operator too."""
    with pytest.raises(FlagValidationError, match="operator 'LIKE' is not one of"):
        parse_constraint("f", "agent LIKE [QA]")


@pytest.mark.parametrize(
    "body",
    [
        {"context_name": "agent", "operator": "IN"},
        {"context_name": "agent", "operator": "IN", "values": "QA"},
        {"context_name": "agent", "operator": "IN", "values": ["QA", 3]},
        {"context_name": "", "operator": "IN", "values": ["QA"]},
        {"context_name": "agent", "operator": "IN", "values": ["QA"], "inverted": "yes"},
        {"context_name": "agent", "operater": "IN", "values": ["QA"]},
        "agent in [QA]",
        42,
    ],
    ids=[
        "no-values",
        "values-string",
        "values-number",
        "empty-name",
        "inverted-string",
        "typo",
        "lowercase-op",
        "number",
    ],
)
def test_malformed_constraints_are_rejected(body):
    """A constraint missing a part, of the wrong type, or unreadable is an error naming the constraint."""
    with pytest.raises(FlagValidationError) as info:
        flag_from_dict("f", {"enabled": True, "constraints": [body]})
    assert info.value.field.startswith("constraints[0]")


# -- constraint shorthand -----------------------------------------------------------------


def test_shorthand_parses_to_the_same_constraint_as_the_object_form():
    """`"agent IN [Builder, Deploy, QA]"` and its object form are the same Constraint."""
    short = parse_constraint("f", "agent IN [Builder, Deploy, QA]")
    long = parse_constraint("f", {"context_name": "agent", "operator": "IN", "values": ["Builder", "Deploy", "QA"]})

    assert short == long == Constraint("agent", Operator.IN, ("Builder", "Deploy", "QA"))


def test_shorthand_inside_a_flags_file_equals_the_object_form():
    """A flags file may mix both forms; the flags come out equal."""
    short = parse_flags_text(
        json.dumps({"f": {"enabled": True, "constraints": ["agent IN [Builder, Deploy, QA]"]}}), "flags.json"
    )
    long = parse_flags_text(
        json.dumps(
            {
                "f": {
                    "enabled": True,
                    "constraints": [{"context_name": "agent", "operator": "IN", "values": ["Builder", "Deploy", "QA"]}],
                }
            }
        ),
        "flags.json",
    )

    assert short == long


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("NOT agent IN [Support]", Constraint("agent", Operator.IN, ("Support",), inverted=True)),
        ("agent STR_EQ Builder", Constraint("agent", Operator.STR_EQ, ("Builder",))),
        ('region STR_STARTS_WITH ["eu-", "us-"]', Constraint("region", Operator.STR_STARTS_WITH, ("eu-", "us-"))),
        ("  agent   NOT_IN   [ QA ,Legal ]  ", Constraint("agent", Operator.NOT_IN, ("QA", "Legal"))),
    ],
)
def test_shorthand_variants(text, expected):
    """Negation, a bare value, quoted values and loose spacing all read as meant."""
    assert parse_constraint("f", text) == expected


def test_shorthand_is_what_a_constraint_prints():
    """A constraint's str() is shorthand that parses back to it."""
    constraint = Constraint("agent", Operator.NOT_IN, ("QA", "Legal"), inverted=True)

    assert parse_constraint("f", str(constraint)) == constraint


@pytest.mark.parametrize(
    "text",
    [
        '{"f": ' + "[" * 5000 + "]" * 5000 + "}",
        '{"f": {"enabled": true, "x_meta": ' + '{"a": ' * 40 + "1" + "}" * 40 + "}}",
    ],
)
def test_deeply_nested_json_is_a_file_error_naming_the_depth(tmp_path, text):
    """JSON nested past the limit (too deep to parse, or a kept extra key too deep to write back) is a FlagsFileError."""
    err = file_error(tmp_path, text)

    assert_names(err, tmp_path / "flags.json", None, "nested too deeply", "32 levels")


def test_extra_keys_nested_a_few_levels_are_kept(tmp_path):
    """The depth limit leaves room for other tools' nested metadata."""
    extra = {"owner": {"team": {"name": "search", "oncall": ["a", "b"]}}}
    flags = parse_flags_text(json.dumps({"f": {"enabled": True, "x_meta": extra}}), tmp_path / "flags.json")

    assert flags["f"].extra == {"x_meta": extra}


def test_an_unknown_key_holding_a_bracket_is_reported_not_a_crash(tmp_path):
    """A nested key like "i[nitial_percentage" (a stray bracket) is a FlagsFileError at its line, not a ValueError."""
    text = SEED_TEXT.replace('"initial_percentage"', '"i[nitial_percentage"')
    err = file_error(tmp_path, text)

    assert_names(err, tmp_path / "flags.json", 7, "unknown key")


def test_a_number_too_long_to_read_is_a_file_error(tmp_path):
    """A 5000-digit number (past Python's integer-string limit) is a FlagsFileError, not a bare ValueError."""
    err = file_error(tmp_path, '{"f": {"enabled": true, "rollout_percentage": ' + "1" * 5000 + "}}")

    assert_names(err, tmp_path / "flags.json", None, "4300 digits")
