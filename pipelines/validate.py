"""Validate: check a batch's manifest before it can touch the dataset.

Two kinds of checks make one report:

- a Great Expectations 1.x suite over the manifest table (no nulls, valid class names, image
  sizes within bounds, modes convertible to RGB, unique images within the batch, known or
  allowed labels) and over a per-class count table (minimum images per class and per new
  class, class balance);
- image checks GX cannot express, in plain Python: files that do not decode, images that
  duplicate the holdout (leakage) or the training set, class names that differ from another
  only by case, whitespace or Unicode form, holdout images for classes whose holdout is
  fixed, and the per-file findings of ingest (not an image, missing, unlabelled).

The result is one typed :class:`ValidationReport`, renderable as text, JSON and HTML.
"""

from __future__ import annotations

import html
import json
import logging
import time
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from core.policies import ValidationPolicy
from pipelines import names
from pipelines.ingest import BatchRefused, Finding, StagedBatch

RGB_CONVERTIBLE_MODES = [
    "RGB",
    "RGBA",
    "RGBX",
    "L",
    "LA",
    "P",
    "PA",
    "CMYK",
    "YCbCr",
    "I",
    "I;16",
    "I;16B",
    "I;16L",
    "F",
    "1",
    "LAB",
    "HSV",
]
INGEST_RULES = {
    "not_an_image": "Every file is an image (by extension).",
    "missing_file": "Every file labels.csv names exists.",
    "unlabelled_file": "Every file has a label (class folder or labels.csv row).",
    "labels_csv": "Every labels.csv row is well formed.",
}


@dataclass(frozen=True)
class Reference:
    """What a batch is checked against: the classes and image hashes of the current dataset."""

    train_classes: frozenset[str] = frozenset()
    holdout_classes: frozenset[str] = frozenset()
    train_sha256: frozenset[str] = frozenset()
    holdout_sha256: frozenset[str] = frozenset()


@dataclass
class RuleResult:
    """One rule of the report: did it pass, how many rows broke it, a few example files."""

    rule: str
    description: str
    passed: bool
    failed_count: int = 0
    examples: list[str] = field(default_factory=list)
    checked_by: str = "refit"  # "great_expectations" or "refit"


@dataclass
class ValidationReport:
    """The verdict on one batch, with everything needed to act on it."""

    batch_id: str
    source: str
    passed: bool
    rules: list[RuleResult]
    class_counts: dict[str, int] = field(default_factory=dict)
    new_classes: list[str] = field(default_factory=list)
    n_images: int = 0
    created_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    @property
    def failed_rules(self) -> list[RuleResult]:
        return [r for r in self.rules if not r.passed]

    @classmethod
    def refused(cls, batch_id: str, source: Path | str, exc: BatchRefused) -> ValidationReport:
        """The report of a batch refused as a whole (unsafe or unreadable archive)."""
        rule = RuleResult(
            exc.rule, "The batch can be unpacked safely.", False, 1, [f"{exc.path}: {exc.message}"]
        )
        return cls(batch_id, str(source), False, [rule])

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)

    def summary(self) -> str:
        """A short plain-text summary for terminals, logs and Prefect."""
        verdict = "PASSED" if self.passed else "FAILED"
        lines = [f"Batch {self.batch_id} ({self.source}): {verdict}, {self.n_images} images"]
        if self.class_counts:
            counts = ", ".join(f"{k} {v}" for k, v in sorted(self.class_counts.items()))
            lines.append(f"  classes: {counts}")
        if self.new_classes:
            lines.append(f"  new classes: {', '.join(self.new_classes)}")
        for rule in self.failed_rules:
            lines.append(f"  x {rule.rule}: {rule.failed_count} - {rule.description}")
            lines += [f"      {example}" for example in rule.examples]
        return "\n".join(lines)

    def to_html(self) -> str:
        """A self-contained HTML page of the report."""
        esc = html.escape
        rows = "".join(
            f"<tr class={'ok' if r.passed else 'bad'}><td>{'✓' if r.passed else '✗'}</td>"
            f"<td><code>{esc(r.rule)}</code></td><td>{esc(r.description)}</td>"
            f"<td>{r.failed_count}</td><td>{'<br>'.join(esc(e) for e in r.examples)}</td>"
            f"<td>{esc(r.checked_by)}</td></tr>"
            for r in self.rules
        )
        counts = "".join(
            f"<tr><td>{esc(k)}{' (new)' if k in self.new_classes else ''}</td><td>{v}</td></tr>"
            for k, v in sorted(self.class_counts.items())
        )
        verdict = "passed" if self.passed else "failed"
        return f"""<!doctype html><html><head><meta charset="utf-8">
<title>Validation of {esc(self.batch_id)}: {verdict}</title><style>
body{{font-family:system-ui,sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}}
tr.bad{{background:#fde8e8}} tr.ok td:first-child{{color:#197a33}}
</style></head><body>
<h1>Batch {esc(self.batch_id)}: {verdict}</h1>
<p>Source: <code>{esc(self.source)}</code> &middot; {self.n_images} images &middot;
{esc(self.created_at)}</p>
<h2>Rules</h2><table><tr><th></th><th>rule</th><th>what it checks</th><th>failed</th>
<th>examples</th><th>checked by</th></tr>{rows}</table>
<h2>Images per class</h2><table><tr><th>class</th><th>images</th></tr>{counts}</table>
</body></html>"""

    def write(self, directory: Path) -> None:
        """Write report.json, report.html and report.txt into ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "report.json").write_text(self.to_json(), encoding="utf-8")
        (directory / "report.html").write_text(self.to_html(), encoding="utf-8")
        (directory / "report.txt").write_text(self.summary() + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- GX suite


def _gx_context():
    """An ephemeral GX context with its progress bars and chatty logs silenced."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def _run_suite(context, name: str, frame: pd.DataFrame, expectations: list, index_column: str):
    import great_expectations as gx

    source = context.data_sources.add_pandas(f"refit-{name}")
    batch = (
        source.add_dataframe_asset(name)
        .add_batch_definition_whole_dataframe("all")
        .get_batch(batch_parameters={"dataframe": frame})
    )
    suite = gx.ExpectationSuite(name=name, expectations=expectations)
    result_format = {"result_format": "COMPLETE", "unexpected_index_column_names": [index_column]}
    return batch.validate(suite, result_format=result_format).results


def _gx_rule_results(results, index_column: str, max_examples: int) -> list[RuleResult]:
    """Fold GX expectation results into rules (several expectations may form one rule)."""
    rules: dict[str, RuleResult] = {}
    for result in results:
        meta = result.expectation_config.meta
        rule = rules.setdefault(
            meta["rule"],
            RuleResult(meta["rule"], meta["description"], True, checked_by="great_expectations"),
        )
        if result.success:
            continue
        rule.passed = False
        column = result.expectation_config.kwargs.get("column")
        rule.failed_count += int(result.result.get("unexpected_count") or 0)
        for item in result.result.get("unexpected_index_list") or []:
            if len(rule.examples) < max_examples:
                value = _plain(item.get(column))
                rule.examples.append(f"{item[index_column]} ({column}={value!r})")
    return list(rules.values())


def _plain(value: object) -> object:
    """A numpy scalar as a plain Python value; whole floats as ints (for readable examples)."""
    value = value.item() if hasattr(value, "item") else value
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _expectation(kind: str, rule: str, description: str, **kwargs):
    import great_expectations.expectations as gxe

    return getattr(gxe, kind)(meta={"rule": rule, "description": description}, **kwargs)


def _manifest_expectations(policy: ValidationPolicy, allowed_labels: list[str]) -> list:
    e = _expectation
    return [
        *(
            e(
                "ExpectColumnValuesToNotBeNull",
                "no_nulls",
                "Path, label and hash are never empty.",
                column=c,
            )
            for c in ("path", "label", "sha256")
        ),
        e(
            "ExpectColumnValuesToMatchRegex",
            "valid_class_name",
            f"Class names are {names.RULE}.",
            column="label",
            regex=names.CLASS_NAME_REGEX,
        ),
        *(
            e(
                "ExpectColumnValuesToBeBetween",
                "size_within_bounds",
                f"Width and height are within {policy.min_side}-{policy.max_side} px "
                "(validation.min_side / max_side).",
                column=c,
                min_value=policy.min_side,
                max_value=policy.max_side,
            )
            for c in ("width", "height")
        ),
        e(
            "ExpectColumnValuesToBeInSet",
            "mode_convertible_to_rgb",
            "Image modes can be converted to RGB.",
            column="mode",
            value_set=RGB_CONVERTIBLE_MODES,
        ),
        e(
            "ExpectColumnValuesToBeUnique",
            "unique_in_batch",
            "No image appears twice in the batch (by sha256).",
            column="sha256",
        ),
        e(
            "ExpectColumnValuesToBeInSet",
            "known_or_allowed_label",
            "Labels are known classes, or new classes are allowed (validation.allow_new_classes).",
            column="label",
            value_set=allowed_labels,
        ),
    ]


def _class_expectations(policy: ValidationPolicy) -> list:
    e = _expectation
    return [
        e(
            "ExpectColumnValuesToBeBetween",
            "min_images_per_class",
            f"Every class has at least {policy.min_images_per_class} images "
            "(validation.min_images_per_class).",
            column="images",
            min_value=policy.min_images_per_class,
        ),
        e(
            "ExpectColumnValuesToBeBetween",
            "min_images_per_new_class",
            f"Every new class has at least {policy.min_images_per_new_class} images "
            "(validation.min_images_per_new_class).",
            column="new_class_images",
            min_value=policy.min_images_per_new_class,
        ),
        e(
            "ExpectColumnValuesToBeBetween",
            "class_balance",
            f"The largest class has at most {policy.max_class_imbalance:g}x the images of the "
            "smallest (validation.max_class_imbalance).",
            column="ratio_to_smallest",
            max_value=policy.max_class_imbalance,
        ),
    ]


# --------------------------------------------------------------------------- image checks


def normalise_class_name(name: str) -> str:
    """The form two class names are compared in: NFKC, case-folded, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", name).casefold().split())


def _rows_rule(
    rule: str, description: str, rows: pd.DataFrame, detail: pd.Series | None, max_examples: int
) -> RuleResult:
    paths = rows["path"][:max_examples].tolist()
    if detail is None:
        examples = [str(path) for path in paths]
    else:
        details = detail[:max_examples].tolist()
        examples = [f"{path} ({d})" for path, d in zip(paths, details, strict=True)]
    return RuleResult(rule, description, rows.empty, len(rows), examples)


def _variant_rule(labels: list[str], reference: Reference, max_examples: int) -> RuleResult:
    existing = reference.train_classes | reference.holdout_classes
    groups: dict[str, set[str]] = {}
    for name in set(labels) | existing:
        groups.setdefault(normalise_class_name(name), set()).add(name)
    clashes = [sorted(g) for g in groups.values() if len(g) > 1 and g - existing]
    examples = [" vs ".join(repr(n) for n in g) for g in clashes][:max_examples]
    return RuleResult(
        "class_name_variant",
        "No class name differs from another only by case, whitespace or Unicode form.",
        not clashes,
        len(clashes),
        examples,
    )


def _finding_rules(findings: list[Finding], max_examples: int) -> list[RuleResult]:
    rules = []
    for rule, description in INGEST_RULES.items():
        hits = [f for f in findings if f.rule == rule]
        examples = [f"{f.path} ({f.detail})" for f in hits[:max_examples]]
        rules.append(RuleResult(rule, description, not hits, len(hits), examples))
    return rules


def _image_rules(
    manifest: pd.DataFrame, reference: Reference, policy: ValidationPolicy
) -> list[RuleResult]:
    n = policy.max_examples
    broken = manifest[~manifest["decodable"]]
    leaked = manifest[manifest["sha256"].isin(reference.holdout_sha256)]
    duplicated = manifest[manifest["sha256"].isin(reference.train_sha256)]
    frozen = manifest[
        (manifest["split"] == "holdout") & manifest["label"].isin(reference.holdout_classes)
    ]
    return [
        _rows_rule("decodable", "Every image decodes completely.", broken, broken["reason"], n),
        _rows_rule(
            "holdout_leakage", "No image duplicates a holdout image (by sha256).", leaked, None, n
        ),
        _rows_rule(
            "duplicate_of_train",
            "No image is already in the training set (by sha256).",
            duplicated,
            None,
            n,
        ),
        _rows_rule(
            "frozen_holdout",
            "No holdout images for classes whose holdout is already fixed.",
            frozen,
            frozen["label"],
            n,
        ),
        _variant_rule(manifest["label"].dropna().tolist(), reference, n),
    ]


# --------------------------------------------------------------------------- entry point


def class_table(manifest: pd.DataFrame, reference: Reference) -> pd.DataFrame:
    """Images per class of the batch, whether the class is new, ratio to the smallest class."""
    counts = manifest["label"].dropna().value_counts().rename_axis("label")
    table = counts.rename("images").reset_index()
    table["new"] = ~table["label"].isin(reference.train_classes)
    table["new_class_images"] = table["images"].where(table["new"])
    table["ratio_to_smallest"] = table["images"] / max(int(table["images"].min() or 1), 1)
    return table


def validate_batch(
    batch: StagedBatch, manifest: pd.DataFrame, reference: Reference, policy: ValidationPolicy
) -> ValidationReport:
    """Run every check on a staged batch and its manifest; changes nothing.

    Args:
        batch: the staged batch (for its id, source and ingest findings).
        manifest: its manifest from :func:`pipelines.ingest.build_manifest`.
        reference: classes and hashes of the current dataset (empty for the first batch).
        policy: thresholds.

    Returns:
        The report; ``passed`` is True only if every rule passed.
    """
    manifest = manifest.assign(label=manifest["label"].where(manifest["label"].str.strip() != ""))
    table = class_table(manifest, reference) if not manifest.empty else None
    new_classes = [] if table is None else names.natural_sorted(table.loc[table["new"], "label"])
    allowed = sorted(
        reference.train_classes
        | reference.holdout_classes
        | (set(new_classes) if policy.allow_new_classes else set())
    )
    rules: list[RuleResult] = []
    if not manifest.empty:
        context = _gx_context()
        rules += _gx_rule_results(
            _run_suite(
                context, "manifest", manifest, _manifest_expectations(policy, allowed), "path"
            ),
            "path",
            policy.max_examples,
        )
        rules += _gx_rule_results(
            _run_suite(context, "classes", table, _class_expectations(policy), "label"),
            "label",
            policy.max_examples,
        )
        rules += _image_rules(manifest, reference, policy)
    else:
        rules.append(
            RuleResult(
                "has_images", "The batch holds at least one image.", False, 1, [str(batch.source)]
            )
        )
    rules += _finding_rules(batch.findings, policy.max_examples)
    return ValidationReport(
        batch_id=batch.batch_id,
        source=str(batch.source),
        passed=all(r.passed for r in rules),
        rules=rules,
        class_counts={str(k): int(v) for k, v in manifest["label"].value_counts().items()},
        new_classes=new_classes,
        n_images=len(manifest),
    )
