"""Label these next: a ranked queue of logged images worth a person's label.

Which images teach most depends on how much the champion has learned (Hacohen et al.
2022, "Active learning on a budget"; Yehuda et al. 2022, ProbCover): while it has learned
little, uncertainty picks the ambiguous images a weak model stumbles on and does no better
than chance, while **typical** images that cover the log do; once the champion is
competent, its **uncertainty** is worth asking about. So:

- **typical** when the champion's holdout accuracy is under ``COMPETENT_AT`` (not known:
  when the budget is under ``TYPICAL_PER_CLASS`` labels per class, the only sign left of a
  young model): the logged images in as many clusters as labels (k-means on the
  features), the most typical image of each (TypiClust: the densest, by the mean distance
  to its nearest neighbours);
- **uncertain** otherwise: the ``UNCERTAIN_POOL`` x budget least certain images (1 - the
  margin between the top two probabilities), clustered into as many groups as labels, the
  least certain of each (uncertain *and* diverse: fifty near-copies cost one label);
- and, in both, when the log holds images **far from the training data**
  (``pipelines.loop.novelty``: far fewer training images among their nearest neighbours
  than chance gives), every second pick is the most novel image left when the other half
  alone still brings ``TYPICAL_PER_CLASS`` labels per class, else every third (``novel_every``):
  the far ones first, then, once they are all picked, the next most novel while their
  neighbours hold fewer training images than chance gives (``NOVEL_UNTIL``). A class the
  champion never saw reaches a person: at 5% false discoveries the far images are only the
  surest part of a new class (``bench/loop.py``: about 90 of 200 trucks), and about half of
  the next most novel are more of it. Only a third of a small budget: there the queue need
  only show the new class ("more like these" fills it to intake's minimum), and the known
  classes, most of what the champion answers, need the labels.

Each pick says which of these chose it. The new-class channel and "more like these" are
``pipelines.loop.newclass``. Novelty compares the logged images' features with
the training sample's the version keeps (``pipelines.loop.features``), both of the
champion's own embedding and both computed off the request path (serving logs features
from the answering call). :func:`export` writes the picks as a batch skeleton (the images +
``labels.csv`` pre-filled with the champion's guess) that, once corrected, uploads as a
normal batch. Numpy and scikit-learn only: serving's Label page uses it too.
"""

from __future__ import annotations

import csv
import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipelines.loop import novelty as density
from pipelines.loop import predlog
from pipelines.loop.novelty import unit

LABELLED = "labelled"  # <log>/labelled/<submission>.json: the ids a submission labelled
PRODUCTION = "production-holdout"  # <log>/production-holdout/<submission>.json: id -> label
TYPICAL_PER_CLASS = 10  # labels per class: under it, a small budget (see strategy, novel_every)
COMPETENT_AT = 0.7  # a champion under this holdout accuracy picks typical images
UNCERTAIN_POOL = 5  # uncertain picks come from the budget x this least certain images
NOVEL_UNTIL = 0.5  # ... while its training neighbours' lower-tail p is under this
DIMENSIONS = 64  # features projected (PCA) to this many for clustering


@dataclass(frozen=True)
class QueueItem:
    entry: dict  # the prediction-log entry
    uncertainty: float
    novelty: float | None  # the relative-density p (smaller: more novel)
    reasons: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.entry["id"]

    @property
    def guess(self) -> str:
        return self.entry["labels"][0]

    @property
    def confidence(self) -> float:
        return float(self.entry["probs"][0])

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "guess": self.guess,
            "confidence": round(self.confidence, 4),
            "reasons": self.reasons,
            "version": self.entry["version"],
            "name": self.entry.get("name", ""),
        }


def strategy(n: int, classes: int, accuracy: float | None) -> tuple[str, str]:
    """("typical" or "uncertain", why) for a budget of ``n`` labels, ``classes`` known
    classes and the champion's holdout ``accuracy`` (None: not known). A known accuracy
    decides: the cold start is about how much the champion has learned, not about this
    round's budget (a champion trained on thousands of images is past it, however few
    labels come next). Without it, a small budget is the only sign of a young model."""
    if accuracy is not None:
        if accuracy < COMPETENT_AT:
            return "typical", f"the champion is weak, {accuracy:.0%} on its holdout"
        return "uncertain", f"a competent champion, {accuracy:.0%} on its holdout"
    if n < TYPICAL_PER_CLASS * max(classes, 1):
        return "typical", f"{n} labels for {classes} classes is a small budget"
    return "uncertain", f"{n} labels for {classes} classes"


def novel_every(n: int, classes: int) -> int:
    """Every how many picks of a budget of ``n`` labels the most novel image left is one:
    2 when the other half alone holds ``TYPICAL_PER_CLASS`` labels per known class, else 3."""
    return 2 if n // 2 >= TYPICAL_PER_CLASS * max(classes, 1) else 3


def rank(
    view: predlog.LogView,
    reference,
    n: int,
    exclude: set[str] = frozenset(),
    accuracy: float | None = None,
    seed: int = 0,
    space: tuple[np.ndarray, np.ndarray] | None = None,
) -> list[QueueItem]:
    """The ``n`` images of the log to label next, best first (fewer if the log holds fewer
    unlabelled images). ``reference``: the champion's ``TrainingFeatures`` (None: no
    novelty); ``accuracy``: its holdout accuracy (None: the budget alone decides);
    ``space``: another embedding to choose in, (the log's entries', the training
    sample's), e.g. the ImageNet one (``pipelines.models.embedding``); default: the
    champion's own features."""
    keep = [i for i, e in enumerate(view.entries) if e["id"] not in exclude]
    if not keep or n <= 0:
        return []
    entries = [view.entries[i] for i in keep]
    n = min(n, len(entries))
    feats = (view.features if space is None else space[0])[keep].astype(np.float32)
    training = None if reference is None else reference.features
    if space is not None:
        training = space[1]
    uncertainty = np.array([1 - float(e["margin"]) for e in entries])
    classes = len(reference.class_names) if reference is not None else len(entries[0]["probs"])
    mode, why = strategy(n, classes, accuracy)
    near = None
    if training is not None and len(training):  # one projection for novelty and clustering
        both = density.project(np.concatenate([training, feats]), seed=seed)
        near = density.novelty(both[len(training) :], both[: len(training)])
        projected = unit(both[len(training) :, :DIMENSIONS])  # the leading components
    else:
        projected = density.project(np.nan_to_num(feats), DIMENSIONS, seed)
    if n == len(entries):  # everything: no choosing, the least certain first
        chosen = np.argsort(-uncertainty, kind="stable")
        reason = f"the log holds no more unlabelled images ({why})"
    elif mode == "typical":
        chosen = density.typical(projected, n, seed=seed)
        reason = f"typical of its part of the log ({why})"
    else:
        pool = np.argsort(-uncertainty, kind="stable")[: UNCERTAIN_POOL * n]
        chosen = pool[_least_certain_per_cluster(projected[pool], uncertainty[pool], n, seed)]
        reason = f"uncertain, unlike the other picks ({why})"
    novel = []
    if near is not None and near.far.any():
        novel = [int(i) for i in near.order() if near.far[i] or near.p[i] < NOVEL_UNTIL]
    picks, taken = [], set()
    regular = [int(i) for i in chosen]
    every = novel_every(n, classes)
    for turn in range(n):
        source = novel if (turn % every == every - 1 and novel) else regular
        while source and source[0] in taken:
            source.pop(0)
        if not source:
            source = novel if source is regular else regular
            while source and source[0] in taken:
                source.pop(0)
        if not source:
            break
        i = source.pop(0)
        taken.add(i)
        picks.append((i, ("far" if near.far[i] else "novel") if source is novel else mode))
    return [_item(entries[i], uncertainty[i], near, i, kind, reason) for i, kind in picks]


def _least_certain_per_cluster(x: np.ndarray, uncertainty: np.ndarray, n: int, seed: int):
    """Indices into ``x``: the least certain image of each of ``n`` k-means clusters, the
    least certain cluster first."""
    from sklearn.cluster import KMeans

    if n >= len(x):
        return np.argsort(-uncertainty, kind="stable")
    labels = KMeans(n_clusters=n, n_init=1, random_state=seed).fit_predict(x)
    best = [
        members[np.argmax(uncertainty[members])]
        for c in range(n)
        if len(members := np.flatnonzero(labels == c))
    ]
    return np.array(sorted(best, key=lambda i: -uncertainty[i]), int)


def _item(entry: dict, uncertainty: float, near, i: int, kind: str, reason: str) -> QueueItem:
    p = None if near is None else float(near.p[i])
    if kind == "far":
        reasons = [
            f"far from the training data: {near.train_neighbours[i]} of its {near.k} nearest "
            f"neighbours are training images, chance gives {near.expected:.0f} (maybe a new class)"
        ]
    elif kind == "novel":
        reasons = [
            f"among the most novel left: {near.train_neighbours[i]} of its {near.k} nearest "
            f"neighbours are training images, chance gives {near.expected:.0f}"
        ]
    elif kind == "uncertain":
        reasons = [f"{reason}: margin {entry['margin']:.2f}"]
    else:
        reasons = [reason]
    return QueueItem(entry, float(uncertainty), p, reasons)


def labelled_ids(store) -> set[str]:
    """Ids of logged images already submitted with labels (the queue skips them)."""
    ids: set[str] = set()
    for name in store.names(store.path(LABELLED)):
        ids |= set(store.read_json(store.path(LABELLED, name)) or [])
    return ids


def hold_out(labels: dict[str, str], share: float) -> dict[str, str]:
    """The labelled images kept out of training as the production holdout: ``share`` of
    them (rounded down, so at least one image always goes to training), chosen by image id
    (a sha256: an unbiased, repeatable draw)."""
    keep = sorted(labels)[: int(len(labels) * share)]
    return {image: labels[image] for image in keep}


def record_labelled(store, submission: str, ids, held_out: dict[str, str]) -> None:
    """Remember what ``submission`` labelled (the queue skips it) and which of its labels
    stay out of training (the gate's production holdout)."""
    store.write_json(store.path(LABELLED, f"{submission}.json"), sorted(ids))
    if held_out:
        store.write_json(store.path(PRODUCTION, f"{submission}.json"), held_out)


def production_labels(store) -> dict[str, str]:
    """The production holdout: logged image id -> the label a person gave it."""
    labels: dict[str, str] = {}
    for name in store.names(store.path(PRODUCTION)):
        labels |= store.read_json(store.path(PRODUCTION, name)) or {}
    return labels


def skeleton(
    items: list[QueueItem], store, label: str | None = None
) -> tuple[list[tuple[str, bytes]], bytes, list[str]]:
    """The batch skeleton of ``items``: (file name, image bytes) pairs, the labels.csv text
    (the ``label`` column pre-filled with ``label``, else the champion's guess), and the ids
    whose image retention removed (left out)."""
    files, gone = [], []
    out = io.StringIO()
    table = csv.writer(out, lineterminator="\n")
    table.writerow(["filename", "label", "guess", "confidence", "why", "image_id"])
    for item in items:
        data = predlog.image_bytes(store, item.entry)
        if data is None:
            gone.append(item.id)
            continue
        name = f"images/{item.id[:16]}{Path(item.entry['image']).suffix}"
        files.append((name, data))
        table.writerow(
            [
                name,
                label or item.guess,
                item.guess,
                f"{item.confidence:.3f}",
                "; ".join(item.reasons),
                item.id,
            ]
        )
    return files, out.getvalue().encode(), gone


def export(
    items: list[QueueItem], store, out: Path, label: str | None = None
) -> tuple[Path, int, list[str]]:
    """Write the skeleton to ``out`` (a ``.zip``, else a folder). Returns (path, images
    written, ids left out because their image is gone)."""
    files, labels, gone = skeleton(items, store, label)
    out = Path(out)
    if out.suffix.lower() == ".zip":
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".part")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
            for name, data in files:
                archive.writestr(name, data)
            archive.writestr("labels.csv", labels)
        tmp.replace(out)
    else:
        if out.exists() and any(out.iterdir()):
            raise FileExistsError(f"{out} exists and is not empty: give a new folder or a .zip")
        for name, data in files:
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_bytes(data)
        (out / "labels.csv").write_bytes(labels)
    return out, len(files), gone
