"""Label these next: a ranked queue of logged images worth a person's label.

Two rankings of the logged images take turns: **uncertainty** (1 - the margin between the
champion's top two probabilities) fills two picks of three, **novelty** (how far the
features lie from the nearest class of the training sample, in units of how far training
images lie from their own class; above 1 it is likely a class the champion does not know)
every third. **Diversity**: a candidate within the near-copy radius of an earlier pick is
passed over, so fifty near-copies of one confusing image cost one label, while many
distinct images of a new class still count.

:func:`export` writes the picks as a batch skeleton (the images + ``labels.csv`` pre-filled
with the champion's guess) that, once corrected, uploads as a normal batch. Numpy only:
serving's Label page uses it too.
"""

from __future__ import annotations

import csv
import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipelines.images.decode import BadImage, decode_upload
from pipelines.loop import novelty as density
from pipelines.loop import predlog
from pipelines.loop.novelty import far_groups, more_like, unit

EMBED_BATCH = 128  # logged images decoded and embedded at a time
MAX_PIXELS = 64_000_000  # a logged image was accepted by serving; this only guards decoding

LABELLED = "labelled"  # <log>/labelled/<submission>.json: the ids a submission labelled
PRODUCTION = "production-holdout"  # <log>/production-holdout/<submission>.json: id -> label
NEW_CLASS_AT = 1.0  # novelty above this: "far from every class"
NOVEL_EVERY = 3  # every third pick is the most novel image left (if any is novel)
NEAR = 1  # percentile of the logged images' distances below which two are near-copies


@dataclass(frozen=True)
class QueueItem:
    entry: dict  # the prediction-log entry
    uncertainty: float
    novelty: float | None
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


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def novelty(features: np.ndarray, reference) -> np.ndarray:
    """Distance to the nearest training class centroid, over the 95th percentile of training
    images' distances to their own centroid (cosine distances)."""
    centroids = _unit(np.nan_to_num(reference.centroids()))
    own = 1 - (_unit(reference.features) * centroids[reference.labels]).sum(1)
    scale = max(float(np.percentile(own, 95)), 1e-6)
    nearest = 1 - (_unit(features) @ centroids.T).max(1)
    return nearest / scale


def rank(
    view: predlog.LogView, reference, n: int, exclude: set[str] = frozenset()
) -> list[QueueItem]:
    """The ``n`` images of the log to label next, best first (fewer if the log holds fewer
    unlabelled images). ``reference``: the champion's training features (None: no novelty)."""
    keep = [i for i, e in enumerate(view.entries) if e["id"] not in exclude]
    if not keep or n <= 0:
        return []
    entries = [view.entries[i] for i in keep]
    feats = _unit(view.features[keep].astype(np.float64))
    uncertainty = np.array([1 - float(e["margin"]) for e in entries])
    far = novelty(view.features[keep], reference) if reference is not None else None
    by_uncertainty = [int(i) for i in np.argsort(-uncertainty, kind="stable")]
    by_novelty = [] if far is None else [int(i) for i in np.argsort(-far) if far[i] > NEW_CLASS_AT]
    radius = _near_copy_radius(feats)
    picked: list[int] = []
    passed: list[int] = []  # near-copies of a pick: taken last, only if nothing else is left
    nearest = np.full(len(entries), np.inf)  # cosine distance to the nearest pick
    for turn in range(2 * len(entries)):
        if len(picked) == min(n, len(entries)) or not (by_novelty or by_uncertainty):
            break
        novel_turn = turn % NOVEL_EVERY == 0 and by_novelty
        candidate = (by_novelty if novel_turn or not by_uncertainty else by_uncertainty).pop(0)
        if candidate in picked:
            continue
        if nearest[candidate] < radius:
            passed.append(candidate)
            continue
        picked.append(candidate)
        nearest = np.minimum(nearest, np.maximum(1 - feats @ feats[candidate], 0))
    picked += list(dict.fromkeys(p for p in passed if p not in picked))[: n - len(picked)]
    return [_item(entries[i], uncertainty[i], None if far is None else far[i]) for i in picked]


def _near_copy_radius(feats: np.ndarray) -> float:
    """Distance below which two images count as near-copies: a low percentile of the
    distances between logged images (a sample of them)."""
    sample = feats[:: max(1, len(feats) // 500)]
    if len(sample) < 2:
        return 0.0
    distances = np.maximum(1 - sample @ sample.T, 0)[np.triu_indices(len(sample), 1)]
    return float(np.percentile(distances, NEAR))


def _item(entry: dict, uncertainty: float, far: float | None) -> QueueItem:
    reasons = []
    if uncertainty >= 0.5:
        reasons.append(f"uncertain (margin {entry['margin']:.2f})")
    if far is not None and far > NEW_CLASS_AT:
        reasons.append(f"far from every class ({far:.1f}x): maybe a new class")
    if not reasons:
        reasons.append("least certain of the rest")
    return QueueItem(entry, float(uncertainty), far, reasons)


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


def next_up(
    store, reference, n: int, newest: int, exclude: set[str] = frozenset()
) -> tuple[list[QueueItem], predlog.LogView]:
    """The queue over the ``newest`` log entries, minus ``exclude`` and what was labelled."""
    view = predlog.read_log(store, newest=newest)
    return rank(view, reference, n, exclude=set(exclude) | labelled_ids(store)), view


def embed_logged(view: predlog.LogView, store, embed, exclude: set[str], progress=print):
    """(entries, embeddings) of the logged images not in ``exclude`` whose image is still
    there and decodes, embedded ``EMBED_BATCH`` at a time."""
    size = (embed.input_px, embed.input_px)
    candidates = [e for e in view.entries if e["id"] not in exclude]
    progress(f"Embedding {len(candidates)} logged images")
    kept, pixels, vectors = [], [], []
    for entry in candidates:
        data = predlog.image_bytes(store, entry)
        if data is None:
            continue  # retention removed it
        try:
            pixels.append(decode_upload(data, size, MAX_PIXELS, entry["id"]))
        except BadImage:
            continue
        kept.append(entry)
        if len(pixels) == EMBED_BATCH:
            vectors.append(embed(np.stack(pixels)))
            pixels = []
    if pixels:
        vectors.append(embed(np.stack(pixels)))
    return kept, (np.concatenate(vectors) if vectors else np.zeros((0, 1), np.float32))


def like(
    view: predlog.LogView,
    store,
    embed,
    seeds: list[str],
    examples: list[tuple[str, bytes]],
    n: int,
    exclude: set[str] = frozenset(),
    progress=print,
) -> list[QueueItem]:
    """ "More like these": the ``n`` logged images nearest (in the ``embed`` embedding, e.g.
    ``pipelines.models.embedding``'s ImageNet one) to the seed images, best first: logged
    images by id (``seeds``) and/or (name, bytes) ``examples`` from elsewhere. Seeds and
    ``exclude`` are never picked.

    Raises:
        ValueError: no seed at all, a seed id not in the log (or its image gone), or an
            example that is not a readable image (named).
    """
    size = (embed.input_px, embed.input_px)
    if missing := [s for s in seeds if s not in {e["id"] for e in view.entries}]:
        raise ValueError(f"seed {missing[0]} is not in the prediction log (give a logged id)")
    seed_pixels = []
    for name, data in examples:
        try:
            seed_pixels.append(decode_upload(data, size, MAX_PIXELS, name))
        except BadImage as exc:
            raise ValueError(str(exc)) from exc
    if not seeds and not seed_pixels:
        raise ValueError("more like what? give seed image ids or example images")
    kept, found = embed_logged(view, store, embed, set(exclude) - set(seeds), progress)
    position = {e["id"]: i for i, e in enumerate(kept)}
    if gone := [s for s in seeds if s not in position]:
        raise ValueError(f"seed {gone[0]}: its image is gone from the log (retention)")
    seed_rows = [found[position[s]] for s in seeds]
    if seed_pixels:
        seed_rows += list(embed(np.stack(seed_pixels)))
    picked = more_like(
        found, np.stack(seed_rows), n, exclude=np.array([position[s] for s in seeds], int)
    )
    direction = unit(unit(np.stack(seed_rows)).mean(axis=0, keepdims=True))[0]
    similarity = unit(found) @ direction
    return [
        QueueItem(kept[i], 1 - float(kept[i]["margin"]), None,
                  [f"like the seeds (similarity {similarity[i]:.2f})"])
        for i in picked
    ]  # fmt: skip


def groups(
    view: predlog.LogView,
    store,
    embed,
    training: np.ndarray,
    exclude: set[str] = frozenset(),
    progress=print,
) -> list[list[QueueItem]]:
    """The new-class channel: logged images far from the training data in the ``embed``
    embedding (``training``: the training sample's embeddings), in groups that look alike,
    largest first (``pipelines.loop.novelty``). Empty when nothing is far."""
    kept, found = embed_logged(view, store, embed, set(exclude), progress)
    if not kept:
        return []
    near = density.novelty(found, training)
    out = []
    for number, members in enumerate(far_groups(found, near.far), start=1):
        reason = f"group {number}: {len(members)} alike, unlike any class"
        out.append([
            QueueItem(kept[i], 1 - float(kept[i]["margin"]), float(near.p[i]),
                      [f"{reason} ({near.train_neighbours[i]} of {near.k} neighbours are "
                       f"training images; chance gives {near.expected:.0f})"])
            for i in members
        ])  # fmt: skip
    return out


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
