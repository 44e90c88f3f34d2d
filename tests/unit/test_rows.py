"""A table's rows as edits: plan_row by table, the ``${field}`` template, and the planner's states."""

from __future__ import annotations

import json

import pytest

from airflow_bettertoken.exceptions import BetterTokenInputError
from airflow_bettertoken.protocol.rows import BadRow, PlannedRow, RowSpec, Seen, plan_row, template_fields_of
from airflow_bettertoken.protocol.wire import MAX_PROMPT_CHARS
from airflow_bettertoken.storage.row_planning import RowPlanner
from airflow_bettertoken.storage.table_plan import PlanEntry, PlanRow, table_plan_location
from airflow_bettertoken.storage.tables import Unreadable, _csv_rows, _jsonl_rows, _text_lines

PREFIX = "s3://out/edited/"
TEMPLATE = RowSpec(dest_prefix=PREFIX, prompt_template="Recolour the ${product} in ${colour}")
OWN = RowSpec(dest_prefix=PREFIX, prompt_column="prompt", size_column="size", dest_column="dest")
SRC = "s3://in/products/a.jpg"


@pytest.mark.parametrize(
    ("spec", "fields", "expected"),
    [
        (
            TEMPLATE,
            {"key": "sku-1", "source": SRC, "product": "mug", "colour": "red"},
            PlannedRow("sku-1", 2, (SRC,), "Recolour the mug in red", "auto", PREFIX + "sku-1.png"),
        ),
        (
            TEMPLATE,
            {"key": 17, "source": f" {SRC} ", "product": "mug", "colour": 3},
            PlannedRow("17", 2, (SRC,), "Recolour the mug in 3", "auto", PREFIX + "17.png"),
        ),
        (
            OWN,
            {"key": "a/b", "source": SRC, "prompt": "Make it blue", "size": "1024x1024", "dest": ""},
            PlannedRow("a/b", 2, (SRC,), "Make it blue", "1024x1024", PREFIX + "a/b.png"),
        ),
        (
            OWN,
            {"key": "k", "source": [SRC, "s3://in/b.png"], "prompt": "p", "dest": "s3://other/x/y.png"},
            PlannedRow("k", 2, (SRC, "s3://in/b.png"), "p", "auto", "s3://other/x/y.png"),
        ),
        (
            OWN,
            {"key": "k", "source": SRC, "prompt": "p", "dest": "s3://other/folder/"},
            PlannedRow("k", 2, (SRC,), "p", "auto", "s3://other/folder/k.png"),
        ),
    ],
    ids=["template", "numbers-as-text", "own-prompt-size", "two-sources-own-dest", "own-dest-prefix"],
)
def test_a_good_row_is_one_edit(spec, fields, expected):
    assert plan_row(fields, 2, spec) == expected


@pytest.mark.parametrize(
    ("spec", "fields", "reason"),
    [
        (TEMPLATE, {"source": SRC, "product": "m", "colour": "r"}, "field 'key' (the key) is missing"),
        (TEMPLATE, {"key": " ", "source": SRC, "product": "m", "colour": "r"}, "'key' (the key) is missing"),
        (TEMPLATE, {"key": "a/../b", "source": SRC, "product": "m", "colour": "r"}, "a '..' path segment"),
        (TEMPLATE, {"key": "/a", "source": SRC, "product": "m", "colour": "r"}, "empty path segment"),
        (TEMPLATE, {"key": "k", "product": "m", "colour": "r"}, "field 'source' is missing or empty"),
        (TEMPLATE, {"key": "k", "source": "in/a.jpg", "product": "m", "colour": "r"}, "is not an s3:// URI"),
        (
            TEMPLATE,
            {"key": "k", "source": "s3://in", "product": "m", "colour": "r"},
            "names no bucket and key",
        ),
        (TEMPLATE, {"key": "k", "source": SRC, "product": "m"}, "uses ${colour}, which the row has no value"),
        (TEMPLATE, {"key": "k", "source": SRC, "product": "m", "colour": None}, "uses ${colour}"),
        (OWN, {"key": "k", "source": SRC}, "field 'prompt' (the prompt) is missing or empty"),
        (OWN, {"key": "k", "source": SRC, "prompt": "p", "size": "999x1"}, "size '999x1' is not allowed"),
        (OWN, {"key": "k", "source": SRC, "prompt": "x" * (MAX_PROMPT_CHARS + 1)}, "characters; at most"),
        (OWN, {"key": "k", "source": [SRC] * 17, "prompt": "p"}, "17 source URIs; at most 16"),
        (
            OWN,
            {"key": "k", "source": SRC, "prompt": "p", "dest": "s3://b/x.jpg"},
            "must end in .png, or in '/'",
        ),
        (OWN, {"key": "k", "source": SRC, "prompt": "p", "dest": "s3://b/a/./x.png"}, "a '.' path segment"),
        (OWN, {"key": "k", "source": SRC, "prompt": "p", "dest": "s3://b/_bettertoken/"}, "provider's own"),
        (
            RowSpec(dest_prefix=PREFIX, prompt_template="   "),
            {"key": "k", "source": SRC},
            "the rendered prompt must be a non-empty string",
        ),
    ],
    ids=[
        "no-key",
        "blank-key",
        "dotdot-key",
        "absolute-key",
        "no-source",
        "source-not-s3",
        "source-no-key",
        "template-field-missing",
        "template-field-null",
        "no-prompt",
        "unknown-size",
        "prompt-too-long",
        "too-many-sources",
        "dest-not-png",
        "dest-dot",
        "dest-reserved",
        "renders-empty",
    ],
)
def test_a_bad_row_says_why(spec, fields, reason):
    bad = plan_row(fields, 7, spec)
    assert isinstance(bad, BadRow) and bad.line == 7
    assert reason in bad.reason


def test_the_template_is_left_alone_by_jinja_and_checked_at_once():
    jinja = pytest.importorskip("jinja2")
    template = "Recolour the ${product} in ${colour}, $$5 off"
    assert jinja.Template(template).render() == template  # Airflow's rendering does not touch it
    assert template_fields_of(template) == ("product", "colour")
    spec = RowSpec(dest_prefix=PREFIX, prompt_template=template)
    row = plan_row({"key": "k", "source": SRC, "product": "mug", "colour": "red"}, 1, spec)
    assert row.prompt == "Recolour the mug in red, $5 off"
    with pytest.raises(BetterTokenInputError, match="character 6"):
        RowSpec(dest_prefix=PREFIX, prompt_template="Make $ blue")
    with pytest.raises(BetterTokenInputError, match="prompt_column, prompt_template"):
        RowSpec(dest_prefix=PREFIX)
    with pytest.raises(BetterTokenInputError, match="size 'huge'"):
        RowSpec(dest_prefix=PREFIX, prompt_column="p", default_size="huge")


def test_a_later_row_with_a_key_or_an_output_seen_before_is_bad_naming_the_first_line():
    seen = Seen()
    first = PlannedRow("a", 2, (SRC,), "p", "auto", PREFIX + "a.png")
    assert seen.check(first) == first
    again = seen.check(first._replace(line=5))
    assert isinstance(again, BadRow) and "also on line 2" in again.reason
    same_output = seen.check(PlannedRow("b", 6, (SRC,), "p", "auto", PREFIX + "a.png"))
    assert isinstance(same_output, BadRow) and "line 2 writes the same output" in same_output.reason


def test_the_planner_settles_every_row_in_order():
    rows = [
        {"key": "done", "source": SRC, "prompt": "p"},
        {"key": "new-1", "source": SRC, "prompt": "p"},
        {"key": "failed", "source": SRC, "prompt": "p"},
        {"key": "bad", "source": SRC},
        {"key": "new-2", "source": SRC, "prompt": "p"},
        {"key": "changed", "source": SRC, "prompt": "p2"},
    ]
    planner = RowPlanner(
        RowSpec(dest_prefix=PREFIX, prompt_column="prompt"),
        max_edits=2,
        outputs_found=lambda uris: {u for u in uris if "done" in u or "changed" in u},
        prompts_changed=lambda rows: {row.key for row in rows if row.prompt == "p2"},
        failed_for_good={"failed": None},
    )
    entries = list(planner.plan([*enumerate(rows, start=1), (7, Unreadable("line 7 is not JSON"))]))
    assert [(e.key, e.state) for e in entries] == [
        ("done", "done"),
        ("new-1", "planned"),
        ("failed", "failed for good"),
        ("bad", "bad"),
        ("new-2", "planned"),
        ("changed", "later"),
        ("", "bad"),
    ]
    assert [edit["image_label"] for edit in planner.edits] == ["new-1", "new-2"]
    counts = planner.row_counts()
    assert (counts.images, counts.done, counts.pending, counts.remaining, counts.planned) == (5, 1, 3, 1, 2)
    assert (counts.failed_for_good, counts.bad) == (1, 2)
    assert [row.reason for row in planner.bad] == [
        "field 'prompt' (the prompt) is missing or empty",
        "line 7 is not JSON",
    ]


def test_a_changed_prompt_is_planned_to_replace_its_output():
    planner = RowPlanner(
        RowSpec(dest_prefix=PREFIX, prompt_column="prompt"),
        max_edits=5,
        outputs_found=lambda uris: set(uris),
        prompts_changed=lambda rows: {"b"},
    )
    rows = [{"key": "a", "source": SRC, "prompt": "p"}, {"key": "b", "source": SRC, "prompt": "q"}]
    list(planner.plan(enumerate(rows, start=1)))
    assert planner.edits == [
        {
            "source": SRC,
            "dest": PREFIX + "b.png",
            "prompt": "q",
            "size": "auto",
            "image_label": "b",
            "if_exists": "replace",
        }
    ]


def test_a_column_in_no_row_fails_naming_it_and_the_columns_found():
    planner = RowPlanner(RowSpec(dest_prefix=PREFIX, prompt_column="prompt"), 5, None)
    with pytest.raises(BetterTokenInputError, match=r"column 'prompt' is in no row .*'key', 'source'"):
        list(planner.plan([(1, {"key": "a", "source": SRC}), (2, {"key": "b", "source": SRC})]))


def test_the_plan_line_is_the_records_dump():
    entry = PlanEntry("k", 3, "bad", None, None, None, (), "why ü")
    assert json.loads(entry.line_json()) == entry.record().dump()
    done = PlanEntry('a"b', 4, "done", "s3://o/a.png", "line\none\t$", "auto", ("s3://i/1.png", "s3://i/2"))
    for row in (entry, done, done.record()):
        assert row.line_json() == json.dumps(
            row.record().dump() if isinstance(row, PlanEntry) else row.dump()
        )
    assert PlanRow.load(json.loads(entry.line_json()), "test") == entry.record()
    assert table_plan_location("b", "dag", "manual__2026-01-01T00:00:00+00:00").key == (
        "_bettertoken/tables/dag/manual__2026-01-01T00_00_00_00_00/plan.jsonl"
    )


def _lines(data: bytes):
    import io

    return _text_lines(io.BytesIO(data), "s3://b/t")


def test_csv_rows_carry_the_line_they_start_on():
    data = b'\xef\xbb\xbfkey,source,prompt\r\na,s3://b/a.png,"two\nlines"\n\nb,s3://b/b.png,p,extra\nc,s3://b/c.png\n'
    rows = list(_csv_rows(_lines(data), "s3://b/t"))
    assert rows[0] == (2, {"key": "a", "source": "s3://b/a.png", "prompt": "two\nlines"})
    assert rows[1] == (5, Unreadable("line 5 has 4 values for 3 columns"))
    assert rows[2] == (6, {"key": "c", "source": "s3://b/c.png"})


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", "is empty: a CSV table needs a header line"),
        (b"key,key\n", "line 1 must be a header naming each column once"),
        (b"key,source\na,b\nc,\xff\n", "is not UTF-8 text: line 3, byte 3"),
    ],
    ids=["empty", "repeated-column", "bad-utf8"],
)
def test_a_csv_that_cannot_be_read_names_the_line(data, error):
    with pytest.raises(BetterTokenInputError, match=error):
        list(_csv_rows(_lines(data), "s3://b/t"))


def test_json_lines_skip_blank_lines_and_report_the_unreadable():
    data = b'{"key": "a"}\n\n[1]\n{"key": \n{"key": "b"}'
    assert list(_jsonl_rows(_lines(data))) == [
        (1, {"key": "a"}),
        (3, Unreadable("line 3 holds a JSON list, not an object")),
        (4, Unreadable("line 4 is not JSON (Expecting value at character 10)")),
        (5, {"key": "b"}),
    ]
