"""Typed policies of the pipeline steps.

Plain pydantic models with defaults, so each step's inputs are explicit and the one settings
object (`refit.settings.Settings`) can compose them (`REFIT_VALIDATION__MIN_IMAGES_PER_CLASS`,
or a `[validation]` table in `refit.toml`). Import-light on purpose.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class IngestLimits(BaseModel):
    """Caps that keep a hostile upload from exhausting the disk or memory."""

    max_files: int = Field(default=200_000, description="Most files one batch may hold.")
    max_total_mb: int = Field(default=4096, description="Most uncompressed MB of one batch.")
    max_file_mb: int = Field(default=64, description="Largest single file, in MB.")
    max_pixels: int = Field(
        default=50_000_000,
        description="Largest image (width x height); bigger ones are decompression bombs.",
    )
    workers: int = Field(default=0, description="Decoding processes (0: one per CPU core).")


class ValidationPolicy(BaseModel):
    """Thresholds of the data checks a batch must pass before it can touch the dataset."""

    min_side: int = Field(default=8, description="Smallest image width/height in pixels.")
    max_side: int = Field(default=12_000, description="Largest image width/height in pixels.")
    min_images_per_class: int = Field(default=5, description="Fewest images of any class.")
    min_images_per_new_class: int = Field(
        default=50, description="Fewest images of a class the dataset does not have yet."
    )
    max_class_imbalance: float = Field(
        default=20.0, description="Largest ratio between the biggest and smallest class."
    )
    allow_new_classes: bool = Field(
        default=True, description="Accept labels the dataset does not have (grows the model)."
    )
    max_examples: int = Field(default=10, description="Example files listed per failed rule.")


class SplitPolicy(BaseModel):
    """How accepted images are divided between train and the fixed holdout."""

    holdout_share: float = Field(
        default=0.2, gt=0, lt=1, description="Share of a new class's images held out."
    )
    seed: int = Field(default=20261123, description="Seed of the stratified holdout split.")
