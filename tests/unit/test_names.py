"""Class names: one safe set of characters, checked at intake (GX rule) and at model
import, and text from users never reaches a report page as markup."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.names import is_valid
from pipelines.reports import rejection


@pytest.mark.parametrize(
    "name",
    [
        "cat",
        "stop sign",
        "Кошка",
        "नमस्ते",
        "แมว",
        "猫",
        "a.b-c_d",
        "0",
        "x" * 64,
        "speed limit (30), urban",
    ],
)
def test_names_of_any_script_pass(name: str) -> None:
    assert is_valid(name)


@pytest.mark.parametrize(
    "name",
    [
        "<img src=x onerror=alert(1)>",
        "a/b",
        "a\\b",
        " cat",
        "cat ",
        ".",
        "..",
        "x" * 65,
        "a\tb",
        "",
    ],
)
def test_markup_paths_and_padding_are_refused(name: str) -> None:
    assert not is_valid(name)


def test_model_import_refuses_unsafe_names() -> None:
    from pipelines.modelfile import check_class_names

    with pytest.raises(ValueError, match="class names must be"):
        check_class_names(["cat", "<b>dog</b>"])
    assert check_class_names([" cat ", "dog"]) == ["cat", "dog"]


def test_a_rejection_report_shows_hostile_names_as_text() -> None:
    page = rejection("<script>x</script>.zip", "label <img src=x onerror=alert(1)>", Path("/q"))
    assert "<img" not in page and "<script>" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
