"""One rule catalogue: every rule the intake can report is in it, with a severity and a
description that fills in with the policy in force."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from core.policies import ValidationPolicy
from pipelines.data.rules import CATALOGUE, describe

DATA = Path(__file__).resolve().parents[2] / "pipelines" / "data"
NAMED = re.compile(
    r'(?:BatchRefused|Finding|RuleResult|_rows_rule)\(\s*"([a-z_]+)"'  # rule first
    r'|(?:skip\([^,()]+|"Expect\w+"),\s*"([a-z_]+)"'  # a skip or an expectation: second
)


def test_every_rule_the_intake_reports_is_catalogued() -> None:
    found = [m for path in DATA.glob("*.py") for m in NAMED.findall(path.read_text())]
    used = {first or second for first, second in found}
    assert {"zip_slip", "decodable", "class_balance", "holdout_leakage", "label_issues"} <= used
    assert used == set(CATALOGUE), f"not both ways: {used ^ set(CATALOGUE)}"


@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_each_rule_has_a_severity_and_a_filled_in_description(name: str) -> None:
    rule = CATALOGUE[name]
    assert rule.severity in {"refuse", "repair", "warn", "setting"}
    text = describe(name, ValidationPolicy())
    assert text.endswith(".") and "{" not in text


def test_descriptions_follow_the_policy() -> None:
    assert (
        "at most 25%"
        in describe("max_skipped_share", ValidationPolicy(max_skipped_share=0.25)).lower()
    )
