"""Validate: check a batch's manifest before it can touch the dataset.

Every rule has a severity. A **refuse** rule fails the batch as a whole: unsafe or corrupt
archives (refused at ingest), leakage into the holdout, labels that cannot be resolved
(invalid or unknown class names, variants of another name, a malformed labels CSV), holdout
images for classes whose holdout is fixed, too few images, a dataset pushed out of
balance, or more files skipped than ``validation.max_skipped_share``. A **repair** rule
skips the files that break it and reports them: an exact duplicate inside the batch (one
copy is kept), a duplicate of a training image, a near-duplicate of a holdout image (by
setting), a file that is not an image, unreadable, out of size bounds, named in the CSV but
missing, or without a label. Class balance and per-class minimums judge the dataset as it
will be after the merge (a batch of known classes is supposed to be uneven); a new class
still needs its own minimum in the batch.

The manifest-level rules and the per-class table run as a Great Expectations 1.x suite;
the image rules GX cannot express (duplicates, leakage, name variants) are plain Python.
The result is one typed :class:`ValidationReport`, renderable as text, JSON and HTML; its
``skipped`` list (path, rule, detail) is what the merge leaves out and the dataset records.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import time
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from core.policies import ValidationPolicy
from pipelines.data.ingest import BatchRefused, Finding, StagedBatch
from pipelines.data.rules import CATALOGUE, describe
from pipelines.images import names

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
# Per-file findings of ingest: skipped (repairs), except a malformed labels CSV.
FINDING_RULES = ("not_an_image", "missing_file", "unlabelled_file", "labels_csv")
REPAIRED_FINDINGS = frozenset(r for r in FINDING_RULES if CATALOGUE[r].severity == "repair")


@dataclass(frozen=True)
class Reference:
    """What a batch is checked against: the classes and image hashes of the current dataset."""

    train_classes: frozenset[str] = frozenset()
    holdout_classes: frozenset[str] = frozenset()
    train_sha256: frozenset[str] = frozenset()
    holdout_sha256: frozenset[str] = frozenset()
    train_counts: tuple[tuple[str, int], ...] = ()  # images per class in the training split
    holdout_phash: tuple[str, ...] = ()  # pHashes of the holdout images (near-duplicates)


@dataclass
class RuleResult:
    """One rule of the report: did it pass, how many rows broke it, a few example files."""

    rule: str
    description: str
    passed: bool
    failed_count: int = 0
    examples: list[str] = field(default_factory=list)
    checked_by: str = "refit"  # "great_expectations" or "refit"
    severity: str = "refuse"  # "refuse": fails the batch; "repair": its files are skipped;
    # "warn": reported only


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
    skipped: list[dict] = field(default_factory=list)  # {path, rule, detail}: left out
    # The champion's view (``pipelines.data.examine``): disputed labels, drift, thumbnail grids
    champion_version: str | None = None
    label_issues: list[dict] = field(default_factory=list)  # {path, label, likely, ...}
    drift: dict | None = None  # pipelines.loop.drift.DriftResult.to_dict() + paths, summary
    grids: dict[str, str] = field(default_factory=dict)  # name -> base64 PNG

    @property
    def warnings(self) -> list[RuleResult]:
        return [r for r in self.rules if r.severity == "warn" and r.failed_count]

    @property
    def failed_rules(self) -> list[RuleResult]:
        return [r for r in self.rules if not r.passed]

    @property
    def repairs(self) -> list[RuleResult]:
        return [r for r in self.rules if r.severity == "repair" and r.failed_count]

    @classmethod
    def refused(cls, batch_id: str, source: Path | str, exc: BatchRefused) -> ValidationReport:
        """The report of a batch refused as a whole (unsafe or unreadable archive)."""
        known = exc.rule in CATALOGUE and CATALOGUE[exc.rule].stage == "ingest"
        text = CATALOGUE[exc.rule].text if known else "The batch can be unpacked safely."
        rule = RuleResult(exc.rule, text, False, 1, [f"{exc.path}: {exc.message}"])
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
        if self.skipped:
            lines.append(f"  repaired: {len(self.skipped)} file(s) skipped")
        for rule in self.repairs:
            lines.append(f"  ~ {rule.rule}: {rule.failed_count} skipped - {rule.description}")
            lines += [f"      {example}" for example in rule.examples]
        for rule in self.warnings:
            lines.append(f"  ! {rule.rule}: {rule.description}")
            lines += [f"      {example}" for example in rule.examples]
        for rule in self.failed_rules:
            lines.append(f"  x {rule.rule}: {rule.failed_count} - {rule.description}")
            lines += [f"      {example}" for example in rule.examples]
        return "\n".join(lines)

    def to_html(self) -> str:
        """A self-contained HTML page of the report."""
        esc = html.escape

        def mark(r: RuleResult) -> tuple[str, str]:
            if not r.passed:
                return "bad", "✗"
            if r.severity in ("repair", "warn") and r.failed_count:
                return "warn", "~" if r.severity == "repair" else "!"
            return "ok", "✓"

        rows = "".join(
            f"<tr class={mark(r)[0]}><td>{mark(r)[1]}</td>"
            f"<td><code>{esc(r.rule)}</code></td><td>{esc(r.description)}</td>"
            f"<td>{esc(r.severity)}</td>"
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
tr.bad{{background:#fde8e8}} tr.warn{{background:#fff6d6}}
tr.ok td:first-child{{color:#197a33}}
</style></head><body>
<h1>Batch {esc(self.batch_id)}: {verdict}</h1>
<p>Source: <code>{esc(self.source)}</code> &middot; {self.n_images} images &middot;
{esc(self.created_at)}</p>
<h2>Rules</h2><table><tr><th></th><th>rule</th><th>what it checks</th><th>severity</th>
<th>broken by</th>
<th>examples</th><th>checked by</th></tr>{rows}</table>
<h2>Images per class</h2><table><tr><th>class</th><th>images</th></tr>{counts}</table>
{self._champion_html()}</body></html>"""

    def _champion_html(self) -> str:
        """The champion's findings: disputed labels and drift, with their thumbnails."""
        esc, parts = html.escape, []
        if self.label_issues:
            rows = "".join(
                f"<tr><td><code>{esc(x['path'])}</code></td><td>{esc(x['label'])} "
                f"({x['label_probability']:.2f})</td><td>{esc(x['likely'])} "
                f"({x['likely_probability']:.2f})</td></tr>"
                for x in self.label_issues
            )
            parts.append(
                f"<h2>Labels champion v{esc(str(self.champion_version))} disputes</h2>"
                + self._grid("label_issues")
                + "<table><tr><th>file</th><th>label (its probability)</th>"
                f"<th>likely label</th></tr>{rows}</table>"
            )
        if self.drift:
            parts.append(
                f"<h2>Drift from the training images</h2><p>{esc(self.drift['summary'])}</p>"
                + (
                    "<p>Most unlike training:</p>" + self._grid("drift")
                    if "drift" in self.grids
                    else ""
                )
            )
        return "\n".join(parts)

    def _grid(self, name: str) -> str:
        data = self.grids.get(name)
        return f'<p><img alt="{name}" src="data:image/png;base64,{data}"></p>' if data else ""

    def write(self, directory: Path) -> None:
        """Write report.json, report.html and report.txt into ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "report.json").write_text(self.to_json(), encoding="utf-8")
        (directory / "report.html").write_text(self.to_html(), encoding="utf-8")
        (directory / "report.txt").write_text(self.summary() + "\n", encoding="utf-8")
        for name, data in self.grids.items():
            (directory / f"{name.replace('_', '-')}.png").write_bytes(base64.b64decode(data))


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


def _expectation(kind: str, rule: str, policy: ValidationPolicy, **kwargs):
    import great_expectations.expectations as gxe

    meta = {"rule": rule, "description": describe(rule, policy)}
    return getattr(gxe, kind)(meta=meta, **kwargs)


def _manifest_expectations(policy: ValidationPolicy, allowed_labels: list[str]) -> list:
    e = _expectation
    return [
        *(
            e("ExpectColumnValuesToNotBeNull", "no_nulls", policy, column=c)
            for c in ("path", "sha256")
        ),
        e(
            "ExpectColumnValuesToMatchRegex",
            "valid_class_name",
            policy,
            column="label",
            regex=names.CLASS_NAME_REGEX,
        ),
        e(
            "ExpectColumnValuesToBeInSet",
            "known_or_allowed_label",
            policy,
            column="label",
            value_set=allowed_labels,
        ),
    ]


def _class_expectations(policy: ValidationPolicy, imbalance_cap: float) -> list:
    e = _expectation
    return [
        e(
            "ExpectColumnValuesToBeBetween",
            "min_images_per_class",
            policy,
            column="merged_images",
            min_value=policy.min_images_per_class,
        ),
        e(
            "ExpectColumnValuesToBeBetween",
            "min_images_per_new_class",
            policy,
            column="new_class_images",
            min_value=policy.min_images_per_new_class,
        ),
        e(
            "ExpectColumnValuesToBeBetween",
            "class_balance",
            policy,
            column="imbalance",
            max_value=imbalance_cap,
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
        CATALOGUE["class_name_variant"].text,
        not clashes,
        len(clashes),
        examples,
    )


def _finding_rules(findings: list[Finding], max_examples: int) -> list[RuleResult]:
    rules = []
    for rule in FINDING_RULES:
        description = CATALOGUE[rule].text
        hits = [f for f in findings if f.rule == rule]
        examples = [f"{f.path} ({f.detail})" for f in hits[:max_examples]]
        if rule in REPAIRED_FINDINGS:
            rules.append(
                RuleResult(rule, description, True, len(hits), examples, severity="repair")
            )
        else:
            rules.append(RuleResult(rule, description, not hits, len(hits), examples))
    return rules


# The per-image repair rules, in the report's order (the near-duplicate rule joins them when
# validation.near_duplicate_leakage = skip).
REPAIRS = (
    "decodable",
    "empty_label",
    "size_within_bounds",
    "mode_convertible_to_rgb",
    "unique_in_batch",
    "conflicting_labels",
    "duplicate_of_train",
)


def _repairs(
    manifest: pd.DataFrame, reference: Reference, policy: ValidationPolicy
) -> tuple[list[RuleResult], pd.DataFrame]:
    """The repair rules, and the manifest rows they skip (path, rule, detail)."""
    skipped: list[tuple[str, str, str]] = []
    taken: set[str] = set()

    def skip(rows: pd.DataFrame, rule: str, detail) -> None:
        for path, text in zip(rows["path"], detail, strict=True):
            if path not in taken:
                taken.add(path)
                skipped.append((path, rule, str(text)))

    broken = manifest[~manifest["decodable"]]
    skip(broken, "decodable", broken["reason"])
    unlabelled = manifest[manifest["label"].isna()]
    skip(unlabelled, "empty_label", ["no label"] * len(unlabelled))
    live = manifest[manifest["decodable"]]
    sides = live[["width", "height"]].astype("float")
    bad_size = live[(sides.min(axis=1) < policy.min_side) | (sides.max(axis=1) > policy.max_side)]
    skip(
        bad_size,
        "size_within_bounds",
        bad_size["width"].astype(str) + "x" + bad_size["height"].astype(str),
    )
    bad_mode = live[~live["mode"].isin(RGB_CONVERTIBLE_MODES)]
    skip(bad_mode, "mode_convertible_to_rgb", "mode " + bad_mode["mode"].astype(str))
    rest = manifest[~manifest["path"].isin(taken)]
    twice = rest[rest["sha256"].duplicated(keep=False)]
    for _, copies in twice.sort_values("path").groupby("sha256", sort=False):
        if copies["label"].nunique() > 1:
            labels = ", ".join(sorted(copies["label"].astype(str).unique()))
            skip(copies, "conflicting_labels", [f"one image labelled {labels}"] * len(copies))
        else:
            first = copies["path"].iloc[0]
            skip(copies.iloc[1:], "unique_in_batch", [f"same image as {first}"] * (len(copies) - 1))
    rest = manifest[~manifest["path"].isin(taken)]
    in_train = rest[rest["sha256"].isin(reference.train_sha256)]
    skip(in_train, "duplicate_of_train", ["already in the training set"] * len(in_train))
    near = _near_holdout(manifest[~manifest["path"].isin(taken)], reference, policy)
    near_skipped = policy.near_duplicate_leakage == "skip"
    if near_skipped:
        skip(near, "near_duplicate_of_holdout", near["detail"])
    table = pd.DataFrame(skipped, columns=["path", "rule", "detail"])
    n = policy.max_examples
    repaired = [*REPAIRS, *(["near_duplicate_of_holdout"] if near_skipped else [])]
    rules = []
    for rule in repaired:
        description = describe(rule, policy)
        hits = table[table["rule"] == rule]
        examples = [f"{p} ({d})" for p, d in zip(hits["path"][:n], hits["detail"][:n], strict=True)]
        rules.append(RuleResult(rule, description, True, len(hits), examples, severity="repair"))
    return rules, table


def _near_holdout(
    rows: pd.DataFrame, reference: Reference, policy: ValidationPolicy
) -> pd.DataFrame:
    """Rows whose pHash is near a holdout image's (exact copies are ``holdout_leakage``)."""
    from pipelines.data.neardup import nearest

    sides = rows[["width", "height"]].astype("float").min(axis=1)
    rows = rows[
        rows["phash"].notna()
        & (sides >= policy.near_duplicate_min_side)
        & ~rows["sha256"].isin(reference.holdout_sha256)
    ]
    if rows.empty or not reference.holdout_phash:
        return rows.iloc[:0].assign(detail=pd.Series(dtype=object))
    distance, _ = nearest(rows["phash"].tolist(), reference.holdout_phash)
    near = rows[distance <= policy.near_duplicate_distance]
    bits = distance[distance <= policy.near_duplicate_distance]
    return near.assign(detail=[f"{b} bits from a holdout image" for b in bits])


def _image_rules(
    manifest: pd.DataFrame, reference: Reference, policy: ValidationPolicy
) -> list[RuleResult]:
    n = policy.max_examples
    leaked = manifest[manifest["sha256"].isin(reference.holdout_sha256)]
    frozen = manifest[
        (manifest["split"] == "holdout") & manifest["label"].isin(reference.holdout_classes)
    ]
    rules = [
        _rows_rule("holdout_leakage", CATALOGUE["holdout_leakage"].text, leaked, None, n),
        _rows_rule(
            "frozen_holdout",
            CATALOGUE["frozen_holdout"].text,
            frozen,
            frozen["label"],
            n,
        ),
        _variant_rule(manifest["label"].dropna().tolist(), reference, n),
    ]
    if policy.near_duplicate_leakage == "refuse":
        near = _near_holdout(manifest, reference, policy)
        rules.append(
            _rows_rule(
                "near_duplicate_of_holdout",
                describe("near_duplicate_of_holdout", policy),
                near,
                near["detail"],
                n,
            )
        )
    return rules


# --------------------------------------------------------------------------- entry point


def class_table(kept: pd.DataFrame, reference: Reference) -> tuple[pd.DataFrame, float]:
    """Per class the batch brings: its images, whether new, the class once merged, and the
    dataset's imbalance after the merge as this class sees it; plus the imbalance before."""
    before = dict(reference.train_counts)
    batch = kept["label"].value_counts()
    after = dict(before)
    for label, count in batch.items():
        after[label] = after.get(label, 0) + int(count)
    table = batch.rename_axis("label").rename("images").reset_index()
    table["new"] = ~table["label"].isin(reference.train_classes)
    table["new_class_images"] = table["images"].where(table["new"])
    table["merged_images"] = [after[label] for label in table["label"]]
    biggest, smallest = max(after.values()), max(min(after.values()), 1)
    table["imbalance"] = [max(m / smallest, biggest / max(m, 1)) for m in table["merged_images"]]
    ratio_before = max(before.values()) / max(min(before.values()), 1) if before else 1.0
    return table, ratio_before


def validate_batch(
    batch: StagedBatch, manifest: pd.DataFrame, reference: Reference, policy: ValidationPolicy
) -> ValidationReport:
    """Run every check on a staged batch and its manifest; changes nothing.

    Args:
        batch: the staged batch (for its id, source and ingest findings).
        manifest: its manifest from :func:`pipelines.data.ingest.build_manifest`.
        reference: classes, counts and hashes of the current dataset (empty at first).
        policy: thresholds.

    Returns:
        The report; ``passed`` is True only if every refuse rule passed. Repaired files are
        listed in ``skipped``.
    """
    manifest = _normalised(manifest)
    rules: list[RuleResult] = []
    skipped = pd.DataFrame(columns=["path", "rule", "detail"])
    new_classes: list[str] = []
    kept = manifest
    if not manifest.empty:
        repairs, skipped = _repairs(manifest, reference, policy)
        kept = manifest[~manifest["path"].isin(skipped["path"])]
        rules += repairs
    if not kept.empty:
        batch_rules, new_classes = _batch_rules(kept, reference, policy)
        rules += batch_rules
    else:
        rules.append(
            RuleResult("has_images", CATALOGUE["has_images"].text, False, 1, [str(batch.source)])
        )
    rules += _finding_rules(batch.findings, policy.max_examples)
    findings = [
        {"path": f.path, "rule": f.rule, "detail": f.detail}
        for f in batch.findings
        if f.rule in REPAIRED_FINDINGS
    ]
    skipped_rows = skipped.to_dict("records") + findings
    rules.append(_skipped_share_rule(len(skipped_rows), len(manifest) + len(findings), policy))
    return ValidationReport(
        batch_id=batch.batch_id,
        source=str(batch.source),
        passed=all(r.passed for r in rules),
        rules=rules,
        class_counts={str(k): int(v) for k, v in kept["label"].value_counts().items()},
        new_classes=new_classes,
        n_images=len(manifest),
        skipped=skipped_rows,
    )


def _normalised(manifest: pd.DataFrame) -> pd.DataFrame:
    """Labels as text or None (blank ones are missing), and a pHash column."""
    labels = manifest["label"].astype(object).where(manifest["label"].notna(), None)
    labels = labels.map(lambda v: None if v is None or not str(v).strip() else str(v))
    manifest = manifest.assign(label=labels)
    return manifest if "phash" in manifest else manifest.assign(phash=None)


def _batch_rules(
    kept: pd.DataFrame, reference: Reference, policy: ValidationPolicy
) -> tuple[list[RuleResult], list[str]]:
    """The rules on the kept rows as a whole (the GX suites and the image checks), and the
    new classes they bring."""
    table, ratio_before = class_table(kept, reference)
    new_classes = names.natural_sorted(table.loc[table["new"], "label"])
    allowed = sorted(
        reference.train_classes
        | reference.holdout_classes
        | (set(new_classes) if policy.allow_new_classes else set())
    )
    context = _gx_context()
    manifest_suite = _manifest_expectations(policy, allowed)
    rules = _gx_rule_results(
        _run_suite(context, "manifest", kept, manifest_suite, "path"), "path", policy.max_examples
    )
    cap = max(policy.max_class_imbalance, ratio_before)
    class_suite = _class_expectations(policy, cap)
    rules += _gx_rule_results(
        _run_suite(context, "classes", table, class_suite, "label"), "label", policy.max_examples
    )
    return rules + _image_rules(kept, reference, policy), new_classes


def _skipped_share_rule(skipped: int, total: int, policy: ValidationPolicy) -> RuleResult:
    share = skipped / total if total else 0.0
    over = share > policy.max_skipped_share
    return RuleResult(
        "max_skipped_share",
        describe("max_skipped_share", policy),
        not over,
        skipped if over else 0,
        [f"{skipped} of {total} files ({share:.0%}) would be skipped"] if over else [],
    )
