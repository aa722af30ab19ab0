"""Class names: one safe set of characters, checked at intake (GX rule) and at model
import, and text from users never reaches a report page as markup."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.images.names import is_valid
from pipelines.judge.reports import rejection


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
    from pipelines.models.modelfile import check_class_names

    with pytest.raises(ValueError, match="class names must be"):
        check_class_names(["cat", "<b>dog</b>"])
    assert check_class_names([" cat ", "dog"]) == ["cat", "dog"]


def test_a_rejection_report_shows_hostile_names_as_text() -> None:
    page = rejection("<script>x</script>.zip", "label <img src=x onerror=alert(1)>", Path("/q"))
    assert "<img" not in page and "<script>" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page


def test_class_list_files_plain_numbered_and_broken(tmp_path: Path) -> None:
    from pipelines.models.modelfile import ModelRefused, read_class_list

    plain = tmp_path / "classes.txt"
    cat = "\u041a\u043e\u0448\u043a\u0430"  # Cyrillic
    plain.write_text(f"\ufeffspeed limit (30), urban\n{cat}\n\nstop\n", encoding="utf-8")
    assert read_class_list(plain) == (["speed limit (30), urban", cat, "stop"], False)
    numbered = tmp_path / "labels.txt"
    numbered.write_text("0 cardboard\n1 paper, recycled\n")  # Teachable Machine's form
    assert read_class_list(numbered) == (["cardboard", "paper, recycled"], True)
    numbered.write_text("1 cardboard\n0 paper\n")
    with pytest.raises(ModelRefused, match="out of order"):
        read_class_list(numbered)
    plain.write_text("\n \n")
    with pytest.raises(ModelRefused, match="empty"):
        read_class_list(plain)
