"""One-line errors: whatever a library says becomes one bounded line."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from longvideo_r1.errors import one_line, validation_line


def test_one_line_collapses_whitespace_and_bounds_length():
    assert one_line("  a\n\tb   c ") == "a b c"
    long = one_line("x" * 300)
    assert len(long) == 200 and long.endswith("...")
    assert one_line(ValueError("bad\nvalue"), limit=5) == "ba..."


class Point(BaseModel):
    x: int
    tags: list[str] = []


def test_validation_line_names_the_first_field_and_its_problem():
    with pytest.raises(ValidationError) as info:
        Point.model_validate({"x": "many", "tags": [1]})
    assert (
        validation_line(info.value)
        == "x: Input should be a valid integer, unable to parse string as an integer"
    )
    with pytest.raises(ValidationError) as whole:
        Point.model_validate([1, 2])
    assert validation_line(whole.value, "trace").startswith("trace: Input should be")
