"""The one human_bytes and the one markdown cell/table helper every report uses."""

import pytest

from loyalty_ops.lib.formatting import (
    first_line,
    human_bytes,
    markdown_cell,
    markdown_code,
    markdown_literal,
    markdown_table,
)


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1536, "1.5 KB"),
        (5 * 1024**2, "5.0 MB"),
        (3.25 * 1024**3, "3.2 GB"),
        (2048 * 1024**4, "2048.0 TB"),  # TB is the largest unit
        (-2048, "-2.0 KB"),  # a size that shrank
        (None, ""),
    ],
)
def test_human_bytes(n, expected):
    assert human_bytes(n) == expected


def test_markdown_cell_escapes_pipes_and_flattens_lines_but_keeps_markdown():
    assert markdown_cell("a|b\nc") == "a\\|b c"
    assert markdown_cell("**bold** `code`") == "**bold** `code`"
    assert markdown_cell(42) == "42"


def test_markdown_literal_shows_names_as_typed_even_inside_a_code_span():
    # An identifier may hold a pipe, a backslash before a pipe, and backticks.
    assert markdown_literal('we\\|ird`name') == "we\\\\\\|ird'name"
    assert markdown_literal("line1\nline2") == "line1 line2"


def test_markdown_table_aligns_columns_and_escapes_every_cell():
    text = markdown_table(["name", "size"], [("a|b", human_bytes(2048)), ("c", "1 B")], "lr")
    assert text.splitlines() == [
        "| name | size |",
        "| --- | ---: |",
        "| a\\|b | 2.0 KB |",
        "| c | 1 B |",
    ]


def test_first_line_of_an_error_or_its_type_when_it_says_nothing():
    assert first_line(RuntimeError("  canceling statement due to lock timeout\nCONTEXT: ...")) == (
        "canceling statement due to lock timeout"
    )
    assert first_line(TimeoutError()) == "TimeoutError"


def test_a_name_as_a_code_span_in_a_table_keeps_the_table_whole():
    text = markdown_table(["table", "rows"], [(markdown_code('public."a|b`c"'), "3")], "lr")
    assert text.splitlines()[2] == "| `public.\"a\\|b'c\"` | 3 |"  # the pipe escaped, the backtick made '
