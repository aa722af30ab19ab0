"""Typed policies of the pipeline steps.

Plain pydantic models with defaults, so each step's inputs are explicit and the one settings
object (`core.settings.Settings`) can compose them (`REFIT_VALIDATION__MIN_IMAGES_PER_CLASS`,
or a `[validation]` table in `refit.toml`). Import-light on purpose.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Section(BaseModel):
    """A table of settings: a key it does not know (a typo) is an error, not ignored."""

    model_config = ConfigDict(extra="forbid")


class IngestLimits(Section):
    """Caps that keep a hostile upload from exhausting the disk or memory."""

    max_files: int = Field(default=200_000, description="Most files one batch may hold.")
    max_total_mb: int = Field(default=4096, description="Most uncompressed MB of one batch.")
    max_file_mb: int = Field(default=64, description="Largest single file, in MB.")
    max_pixels: int = Field(
        default=50_000_000,
        description="Largest image (width x height); bigger ones are decompression bombs.",
    )
    workers: int = Field(default=0, description="Decoding processes (0: one per CPU core).")


class ValidationPolicy(Section):
    """Thresholds of the data checks a batch must pass before it can touch the dataset."""

    min_side: int = Field(default=8, description="Smallest image width/height in pixels.")
    max_side: int = Field(default=12_000, description="Largest image width/height in pixels.")
    min_images_per_class: int = Field(
        default=5, description="Fewest images of any class the batch brings, after the merge."
    )
    min_images_per_new_class: int = Field(
        default=50, description="Fewest images of a class the dataset does not have yet."
    )
    max_class_imbalance: float = Field(
        default=20.0,
        description="Largest ratio between the biggest and smallest class after the merge "
        "(a batch may not push the dataset past it).",
    )
    allow_new_classes: bool = Field(
        default=True, description="Accept labels the dataset does not have (grows the model)."
    )
    max_skipped_share: float = Field(
        default=0.2,
        ge=0,
        le=1,
        description="Most of a batch's files that may be skipped as repairs (not an image, "
        "missing, unlabelled, unreadable, duplicate) before the whole batch is refused.",
    )
    near_duplicate_min_side: int = Field(
        default=48,
        description="Images smaller than this (px) are checked for leakage by sha256 only: "
        "at that size pHash sees little more than the layout.",
    )
    near_duplicate_distance: int = Field(
        default=6,
        ge=0,
        le=32,
        description="Most differing pHash bits (of 64) for two images to be near-duplicates.",
    )
    near_duplicate_leakage: Literal["skip", "refuse"] = Field(
        default="skip",
        description="A batch image that nearly duplicates a holdout image: skip it with a "
        "warning, or refuse the batch.",
    )
    label_issues: Literal["warn", "exclude", "refuse"] = Field(
        default="warn",
        description="Images whose label the champion strongly disputes (cleanlab's confident "
        "learning): warn in the report, leave them out of the merge, or refuse the batch when "
        "their share is over label_issues_max_share.",
    )
    label_issues_max_share: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="Share of disputed labels a batch may have "
        "before label_issues = refuse refuses it.",
    )
    drift_alpha: float = Field(
        default=0.01,
        gt=0,
        lt=1,
        description="A batch (or the live log) drifted from the "
        "training images when the permutation test's p-value is below this.",
    )
    max_examples: int = Field(default=10, description="Example files listed per failed rule.")


class SplitPolicy(Section):
    """How accepted images are divided between train and the fixed holdout."""

    holdout_share: float = Field(
        default=0.2, gt=0, lt=1, description="Share of a new class's images held out."
    )
    seed: int = Field(default=20261123, description="Seed of the stratified holdout split.")


ARCHITECTURES = ("airbench", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "vgg16")
PRETRAINED_PX = 224  # the size ImageNet backbones were trained at


class ArchitectureConfig(Section):
    """Which network to build (``pipelines.training.architectures``)."""

    name: Literal[ARCHITECTURES] = Field(
        default="airbench",
        description="airbench (Refit's small-image net, from scratch), or a backbone: "
        "mobilenet_v2 (torchvision's; ImageNet weights offline), mobilenet_v3_small, "
        "efficientnet_b0, vgg16 (keras.applications; ImageNet weights by download).",
    )
    input_size: int = Field(default=32, description="Input height and width of the model.")
    widths: tuple[int, int, int] = Field(
        default=(64, 256, 256), description="airbench: channels of its three conv groups."
    )
    backbone_size: int | None = Field(
        default=None,
        description="Backbones: resize to this inside the model (default: 224 with "
        "pretrained weights, the size they were trained at; else 96).",
    )
    weights: str | None = Field(
        default=None,
        description="Backbones: imagenet (pretrained weights: see Start from your photos), "
        "a local weights file, or none (random).",
    )
    dropout: float = Field(default=0.0, description="Dropout before the output layer.")

    @model_validator(mode="after")
    def _weights_fit(self):
        if self.weights and self.name == "airbench":
            raise ValueError(
                "architecture.weights: airbench trains from scratch and has no pretrained "
                "weights; choose a backbone (architecture.name = mobilenet_v2)"
            )
        return self

    def backbone_px(self) -> int:
        """The size the backbone sees."""
        return self.backbone_size or (PRETRAINED_PX if self.weights else 96)


class TrainConfig(Section):
    """Training from scratch (`refit train bootstrap`, the bootstrap flow's train_from_scratch)."""

    epochs: int = Field(default=40, description="Epochs of the one-cycle schedule.")
    batch_size: int = Field(default=512, description="Images per step.")
    peak_lr: float = Field(default=1.0, description="Peak learning rate (SGD, Nesterov).")
    warmup_share: float = Field(default=0.2, description="Share of the run spent warming up.")
    momentum: float = Field(default=0.85, description="SGD momentum.")
    weight_decay: float = Field(
        default=6.7e-3, description="Decoupled weight decay (Keras: shrinks by lr x this per step)."
    )
    label_smoothing: float = Field(default=0.2, description="Label smoothing of the loss.")
    val_share: float = Field(default=0.05, description="Share held out for validation.")
    patience: int = Field(
        default=12,
        description="Early stopping patience (epochs), counted in the run's second half.",
    )
    time_budget_s: float = Field(
        default=3300, description="Wall-time budget; the schedule compresses to fit it."
    )
    precision: Literal["auto", "float32", "mixed_bfloat16"] = Field(
        default="auto",
        description="Compute precision while training; auto: bfloat16 where the CPU has "
        "bf16 instructions (AVX512-BF16, AMX), else float32. Saved models are float32.",
    )
    seed: int = Field(default=0, description="Seed of splits, shuffling and augmentation.")
    pretrained_head_c: float = Field(
        default=0.3,
        description="Pretrained backbones: inverse L2 strength of the head's logistic regression.",
    )
    pretrained_flip: bool = Field(
        default=True,
        description="Pretrained backbones: train on mirror images too (off for classes that "
        "mirroring changes: road signs, text, left/right).",
    )
    pretrained_epochs: int = Field(
        default=8, description="Pretrained backbones: most epochs with the top unfrozen."
    )
    pretrained_lr: float = Field(
        default=1e-4, description="Pretrained backbones: Adam's learning rate for the top."
    )
    pretrained_unfreeze_layers: int = Field(
        default=13,
        description="Pretrained backbones: conv layers trained from the top (13: MobileNetV2's "
        "last four blocks and its final 1x1 conv).",
    )
    pretrained_patience: int = Field(
        default=3, description="Pretrained backbones: early stopping patience (epochs)."
    )


class FinetuneConfig(Section):
    """Fine-tuning the champion on new data with replay of the old.

    Two recipes: ``refit`` (SGD + one-cycle, for Refit's own nets) and ``gentle`` (Adam at a
    learning rate a short range test fits to the model, early stopping, batch norm kept in
    inference mode: for models Refit did not make). ``auto`` picks gentle for imported
    models. Either way a stratified validation split of the data is held back, and a
    fine-tune never hands the gate a model worse on it than the one it started from.
    """

    recipe: Literal["auto", "refit", "gentle"] = Field(
        default="auto", description="auto: gentle for imported models, refit for Refit's own."
    )
    val_share: float = Field(
        default=0.05,
        ge=0,
        lt=1,
        description="Share of the new images held for validation (the same share of the "
        "replay count comes from old images the replay left unused).",
    )
    gentle_lr: float | None = Field(
        default=None, description="Gentle: head learning rate (None: an LR range test picks it)."
    )
    gentle_head_epochs: int = Field(default=30, description="Gentle: most head-only epochs.")
    gentle_epochs: int = Field(default=8, description="Gentle: most epochs with the top unfrozen.")
    gentle_unfreeze_layers: int = Field(
        default=6,
        description="Gentle: conv/dense layers unfrozen from the top in phase 2 (-1: all).",
    )
    patience: int = Field(default=3, description="Gentle: early stopping patience (epochs).")
    cache_features_from_px: int = Field(
        default=96,
        description="Gentle: models this large or larger train on features computed once "
        "(frozen layers run once, not every epoch).",
    )

    head_epochs: int = Field(default=2, description="Phase 1: epochs training the head only.")
    head_lr: float = Field(default=0.05, description="Phase 1 peak learning rate.")
    epochs: int = Field(default=14, description="Phase 2: epochs with the top unfrozen.")
    lr: float = Field(default=0.05, description="Phase 2 peak learning rate.")
    unfreeze_layers: int = Field(
        default=3,
        description="Phase 2: weight layers unfrozen from the top (-1: all). More forget more.",
    )
    replay_ratio: float = Field(
        default=4.0, description="Replayed old training images per new image."
    )
    warmup_share: float = Field(default=0.15, description="Share of each phase warming up.")
    momentum: float = Field(default=0.9, description="SGD momentum.")
    weight_decay: float = Field(default=5e-4, description="Decoupled weight decay.")
    batch_size: int = Field(default=256, description="Images per step.")
    label_smoothing: float = Field(default=0.1, description="Label smoothing of the loss.")
    time_budget_s: float = Field(default=170, description="Wall-time budget of both phases.")
    seed: int = Field(default=0, description="Seed of the replay sample and shuffling.")


class GatePolicy(Section):
    """When a challenger may replace the champion (the "blessing"): paired tests on the
    holdout images both models answer, at one-sided error rate ``alpha``."""

    alpha: float = Field(
        default=0.05,
        gt=0,
        lt=0.5,
        description="One-sided error rate of each test: the chance that a challenger no "
        "better than the champion is blessed. Lower asks for more evidence (more holdout "
        "images, or a clearer gain) before a promotion.",
    )
    mode: Literal["superiority", "non_inferiority"] = Field(
        default="superiority",
        description="Same classes: superiority blesses only with evidence the challenger is "
        "better (by min_delta); non_inferiority blesses with evidence it is no worse than "
        "margin (for retrains on fresher data that should not cost accuracy).",
    )
    min_delta: float = Field(
        default=0.0,
        description="Superiority: the accuracy difference's lower bound must exceed this.",
    )
    margin: float = Field(
        default=0.01,
        ge=0,
        description="Non-inferiority: the accuracy difference's lower bound must exceed -margin.",
    )
    max_recall_drop: float = Field(
        default=0.03,
        description="Same classes: a class refuses the challenger when its recall dropped by "
        "more than this with evidence (a paired test, Holm-corrected over the classes).",
    )
    max_old_accuracy_drop: float = Field(
        default=0.04,
        description="New classes: the old-class accuracy difference's lower bound must stay "
        "above -this (adding a class costs some old-class accuracy; see the guide).",
    )
    new_class_min_recall: float = Field(
        default=0.8,
        description="New classes: each one's recall lower bound must reach this.",
    )
    min_accuracy: float = Field(
        default=0.5, description="Absolute floor, and the only check when there is no champion."
    )
    max_negative_flip_rate: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Optional: refuse a challenger that gets wrong more than this share of the "
        "holdout images the champion got right (users notice answers that change for the "
        "worse, even when accuracy rises). None: not checked.",
    )
    approval: Literal["auto", "manual", "when_inconclusive"] = Field(
        default="auto",
        description="Who promotes: auto (the gate's blessing), manual (a person approves every "
        "challenger the gate did not refuse), when_inconclusive (a person decides the ones the "
        "evidence could not; blessed ones go live on their own).",
    )
    approval_timeout_h: float = Field(
        default=72.0,
        gt=0,
        description="A challenger waiting for a person longer than this is rejected (recorded).",
    )
    shadow_images: int = Field(
        default=500,
        ge=0,
        description="Shadow check: the newest logged production images the challenger answers "
        "beside the champion (agreement, shift in predicted class shares). 0: no shadow check.",
    )
    production_min_images: int = Field(
        default=200,
        ge=1,
        description="With at least this many labelled production images kept out of training "
        "(`loop.production_holdout_share`), both models' paired accuracy on them is a gate "
        "check: evidence the challenger is worse on production refuses it.",
    )
