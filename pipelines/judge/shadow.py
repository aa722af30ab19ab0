"""The shadow check: the challenger answers production traffic before it may serve it.

From the prediction log (:mod:`pipelines.loop.predlog`), two samples:

- the newest ``gate.shadow_images`` logged images, answered by both models: how often they
  agree, and how the share of each predicted class moves (no labels needed);
- the production holdout: logged images people labelled on the Label page and that were kept
  out of training (``loop.production_holdout_share``): both models' accuracy on them, paired.
  With at least ``gate.production_min_images`` of them, the gate refuses a challenger with
  evidence it is worse there (the holdout decides whether it is better).

Labelled images that went into training are left out: the challenger learnt them. Nothing
here fails a run: an empty log, a log the reader cannot reach, images that retention removed
are said and counted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from pipelines.judge import stats
from pipelines.models.modelfile import LoadedModel

MAX_PIXELS = 40_000_000  # a logged image was accepted by serving; this only guards decoding


@dataclass
class Sample:
    """What the log holds for a shadow check: image bytes, newest last."""

    recent: list[bytes] = field(default_factory=list)
    labelled: list[bytes] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    versions: dict[str, int] = field(default_factory=dict)  # champion version -> answers
    newest_age_s: float | None = None
    notes: list[str] = field(default_factory=list)


def read_sample(store, newest: int, now: float | None = None) -> Sample:
    """The ``newest`` logged images and the production holdout's images, as stored."""
    from pipelines.loop import labelqueue, predlog

    sample = Sample()
    try:
        view = predlog.read_log(store)
        wanted = labelqueue.production_labels(store)
    except Exception as exc:  # a log out of reach never fails the run
        sample.notes.append(f"the prediction log could not be read: {exc}")
        return sample
    if view.unreadable:
        sample.notes.append(f"{view.unreadable} unreadable log lines skipped")
    missing = 0
    for entry in view.entries[-newest:] if newest else []:
        data = predlog.image_bytes(store, entry)
        if data is None:
            missing += 1
            continue
        sample.recent.append(data)
        version = str(entry.get("version"))
        sample.versions[version] = sample.versions.get(version, 0) + 1
    if missing:
        sample.notes.append(f"{missing} recent logged images were removed by retention")
    if view.entries:
        sample.newest_age_s = (now or time.time()) - float(view.entries[-1].get("time", 0))
    by_id = {entry["id"]: entry for entry in view.entries}
    removed = 0
    for image, label in sorted(wanted.items()):
        data = predlog.image_bytes(store, by_id[image]) if image in by_id else None
        if data is None:
            removed += 1
            continue
        sample.labelled.append(data)
        sample.labels.append(label)
    if removed:
        sample.notes.append(
            f"{removed} of {len(wanted)} labelled production images were removed by retention"
        )
    return sample


@dataclass(frozen=True)
class Shadow:
    """Both models on production traffic."""

    images: int  # recent logged images both answered
    agreement: float | None  # share answered alike
    shares: dict[str, tuple[float, float]]  # class -> (champion's share, challenger's share)
    labelled: stats.PairedTest | None  # on the production holdout (the champion's classes)
    champion_accuracy: float | None
    challenger_accuracy: float | None
    notes: tuple[str, ...] = ()

    @property
    def largest_shift(self) -> tuple[str, float] | None:
        """The class whose predicted share moved most, and by how much."""
        if not self.shares:
            return None
        name = max(self.shares, key=lambda c: abs(self.shares[c][1] - self.shares[c][0]))
        return name, self.shares[name][1] - self.shares[name][0]

    def summary(self) -> str:
        if not self.images and self.labelled is None:
            return "no production traffic to compare on" + "".join(f"; {n}" for n in self.notes)
        parts = []
        if self.images:
            name, shift = self.largest_shift
            parts.append(
                f"{self.agreement:.1%} of the {self.images} newest logged images answered alike; "
                f"largest shift in predicted share: {name} {shift:+.1%}"
            )
        if self.labelled is not None:
            parts.append(
                f"labelled production images: champion {self.champion_accuracy:.4f}, "
                f"challenger {self.challenger_accuracy:.4f}, {self.labelled.summary()}"
            )
        return "; ".join(parts + list(self.notes))

    def metrics(self) -> dict[str, float]:
        found = {"shadow.images": float(self.images)}
        if self.agreement is not None:
            found["shadow.agreement"] = self.agreement
        if self.labelled is not None:
            found |= {
                "shadow.labelled": float(self.labelled.n),
                "shadow.champion_accuracy": self.champion_accuracy,
                "shadow.challenger_accuracy": self.challenger_accuracy,
                "shadow.difference": self.labelled.difference,
            }
        return found


def _answers(model: LoadedModel, images: list[bytes], decoded: dict) -> np.ndarray:
    """``model``'s predicted class names for ``images`` (decoded once per input size)."""
    from pipelines.images.decode import BadImage, decode_upload
    from pipelines.models.predict import predict_proba

    size = model.input_size
    if size not in decoded:
        rows = []
        for data in images:
            try:
                rows.append(decode_upload(data, size, MAX_PIXELS))
            except BadImage:  # serving decoded it once; a file damaged since is skipped
                rows.append(np.zeros((*size, 3), np.float32))
        decoded[size] = np.stack(rows) if rows else np.zeros((0, *size, 3), np.float32)
    probs = predict_proba(model.model, decoded[size])
    return np.array(model.class_names, dtype=object)[probs.argmax(axis=1)]


def compare(champion: LoadedModel, challenger: LoadedModel, sample: Sample, alpha: float) -> Shadow:
    """Both models on the sample: agreement and class shares on the recent images, paired
    accuracy on the labelled ones of the champion's classes."""
    shares: dict[str, tuple[float, float]] = {}
    agreement = None
    if sample.recent:
        decoded: dict = {}
        old = _answers(champion, sample.recent, decoded)
        new = _answers(challenger, sample.recent, decoded)
        agreement = float((old == new).mean())
        for name in dict.fromkeys([*champion.class_names, *challenger.class_names]):
            shares[name] = (float((old == name).mean()), float((new == name).mean()))
    labelled = old_accuracy = new_accuracy = None
    notes = list(sample.notes)
    known = [i for i, label in enumerate(sample.labels) if label in champion.class_names]
    if len(known) < len(sample.labels):
        notes.append(
            f"{len(sample.labels) - len(known)} labelled production images of classes the "
            "champion does not know left out"
        )
    if known:
        images = [sample.labelled[i] for i in known]
        truth = np.array([sample.labels[i] for i in known], dtype=object)
        decoded = {}
        old_right = _answers(champion, images, decoded) == truth
        new_right = _answers(challenger, images, decoded) == truth
        labelled = stats.paired(old_right, new_right, alpha)
        old_accuracy, new_accuracy = float(old_right.mean()), float(new_right.mean())
    return Shadow(
        len(sample.recent), agreement, shares, labelled, old_accuracy, new_accuracy, tuple(notes)
    )
