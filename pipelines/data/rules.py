"""The validation rules, once: name, severity and what each checks. The validator, the
report and the docs' rule reference all read this catalogue.

Severities: **refuse** fails the batch as a whole; **repair** skips the files that break
the rule and reports them; **warn** only reports; **setting** means a setting picks one of
those. A description may name settings as ``{policy.<field>}``; it is filled in with the
policy in force.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.images import names


@dataclass(frozen=True)
class Rule:
    name: str
    severity: str  # refuse | repair | warn | setting
    text: str  # what it checks; ``{policy.x}`` placeholders are filled in by describe()
    checked_by: str = "refit"
    stage: str = "validate"  # ingest (unpacking), validate, examine (the champion), merge

    def describe(self, policy: object) -> str:
        return self.text.format(policy=policy)


def _rules(*rules: Rule) -> dict[str, Rule]:
    return {rule.name: rule for rule in rules}


GX = "great_expectations"
NEAR = (
    "No image nearly duplicates a holdout image (pHash within "
    "{policy.near_duplicate_distance} of 64 bits: re-saved, resized, a neighbouring frame; "
    "images of {policy.near_duplicate_min_side} px and up; "
    "validation.near_duplicate_leakage = {policy.near_duplicate_leakage})."
)

CATALOGUE = _rules(
    # While unpacking: the batch is refused as a whole.
    Rule("missing", "refuse", "The batch exists: a file or a folder.", stage="ingest"),
    Rule(
        "unsupported_format",
        "refuse",
        "The batch is a zip, tar, tar.gz, folder or CSV.",
        stage="ingest",
    ),
    Rule(
        "zip_slip",
        "refuse",
        "No archive member has an absolute path or points outside the batch (..).",
        stage="ingest",
    ),
    Rule("link", "refuse", "No member is a symlink or a hard link.", stage="ingest"),
    Rule("special_file", "refuse", "Every member is a regular file.", stage="ingest"),
    Rule(
        "corrupt_archive", "refuse", "The archive and each member read completely.", stage="ingest"
    ),
    Rule("too_many_files", "refuse", "At most ingest.max_files files.", stage="ingest"),
    Rule("file_too_large", "refuse", "No file over ingest.max_file_bytes.", stage="ingest"),
    Rule(
        "too_large",
        "refuse",
        "The batch unpacks to at most ingest.max_total_bytes (and no "
        "member expands beyond ingest.max_compression_ratio).",
        stage="ingest",
    ),
    Rule("nested_archive", "refuse", "No archive inside the batch.", stage="ingest"),
    Rule("empty_batch", "refuse", "The batch holds images.", stage="ingest"),
    Rule(
        "labels_csv",
        "refuse",
        "labels.csv is UTF-8, valid CSV, and every row well formed.",
        stage="ingest",
    ),
    Rule(
        "not_an_image",
        "repair",
        "Every file is an image by extension (others are skipped).",
        stage="ingest",
    ),
    Rule(
        "missing_file",
        "repair",
        "Every file labels.csv names exists (missing ones are skipped).",
        stage="ingest",
    ),
    Rule(
        "unlabelled_file",
        "repair",
        "Every file has a label: a class folder or labels.csv row (others are skipped).",
        stage="ingest",
    ),
    # Per image: the files that break these are skipped.
    Rule("decodable", "repair", "Every image decodes completely (unreadable ones are skipped)."),
    Rule(
        "empty_label", "repair", "Every labels.csv row has a label (rows without one are skipped)."
    ),
    Rule(
        "size_within_bounds",
        "repair",
        "Width and height are within "
        "{policy.min_side}-{policy.max_side} px (validation.min_side / max_side; others are "
        "skipped).",
    ),
    Rule(
        "mode_convertible_to_rgb",
        "repair",
        "Image modes can be converted to RGB (others are skipped).",
    ),
    Rule(
        "unique_in_batch",
        "repair",
        "No image appears twice in the batch by sha256 (one copy is kept).",
    ),
    Rule(
        "conflicting_labels",
        "repair",
        "No image appears in the batch under two labels "
        "(every copy is skipped: which label is right cannot be told).",
    ),
    Rule(
        "duplicate_of_train",
        "repair",
        "No image is already in the training set by sha256 (skipped).",
    ),
    Rule("near_duplicate_of_holdout", "setting", NEAR),
    # The batch as a whole.
    Rule("has_images", "refuse", "The batch holds at least one usable image."),
    Rule("no_nulls", "refuse", "Path and hash are never empty.", GX),
    Rule("valid_class_name", "refuse", f"Class names are {names.RULE}.", GX),
    Rule(
        "known_or_allowed_label",
        "refuse",
        "Labels are known classes, or new classes are allowed (validation.allow_new_classes).",
        GX,
    ),
    Rule(
        "min_images_per_class",
        "refuse",
        "Every class the batch brings has at least "
        "{policy.min_images_per_class} images once merged "
        "(validation.min_images_per_class).",
        GX,
    ),
    Rule(
        "min_images_per_new_class",
        "refuse",
        "Every new class has at least "
        "{policy.min_images_per_new_class} images (validation.min_images_per_new_class).",
        GX,
    ),
    Rule(
        "class_balance",
        "refuse",
        "After the merge, no class has more than "
        "{policy.max_class_imbalance:g}x the images of another, or the batch leaves the "
        "imbalance no worse (validation.max_class_imbalance).",
        GX,
    ),
    Rule("holdout_leakage", "refuse", "No image duplicates a holdout image (by sha256)."),
    Rule(
        "frozen_holdout", "refuse", "No holdout images for classes whose holdout is already fixed."
    ),
    Rule(
        "class_name_variant",
        "refuse",
        "No class name differs from another only by case, whitespace or Unicode form.",
    ),
    Rule(
        "max_skipped_share",
        "refuse",
        "At most {policy.max_skipped_share:.0%} of the "
        "batch's files are skipped as repairs (validation.max_skipped_share).",
    ),
    Rule(
        "already_merged",
        "warn",
        "The batch is not already the current dataset version (a run interrupted after "
        "merging it); if it is, nothing is merged again.",
        stage="merge",
    ),
    # Through the champion's eyes (when there is a champion).
    Rule(
        "label_issues",
        "setting",
        "The champion does not strongly dispute the labels "
        "(cleanlab confident learning on the images of classes it knows); "
        "validation.label_issues = warn, exclude (repair) or refuse (over "
        "validation.label_issues_max_share).",
        "cleanlab",
        "examine",
    ),
    Rule(
        "drift",
        "warn",
        "The batch looks like the champion's training images (MMD test on "
        "its features, validation.drift_alpha).",
        "refit (MMD)",
        "examine",
    ),
)


def describe(name: str, policy: object) -> str:
    """What rule ``name`` checks, with the settings of ``policy`` filled in."""
    return CATALOGUE[name].describe(policy)
