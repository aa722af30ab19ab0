"""What the champion lacks, a class at a time: the new-class channel (logged images far from
the training data, in groups that look alike, to name in one step) and "more like these"
(the logged images most like a few a person marked or brought), in the champion's logged
features or in another embedding (e.g. the ImageNet one, ``pipelines.models.embedding``),
whose vectors of logged images are computed once and kept in the log. The picks are
``labelqueue.QueueItem`` s, exported by ``labelqueue.export`` like the queue's.
"""

from __future__ import annotations

import io

import numpy as np

from pipelines.images.decode import BadImage, decode_upload
from pipelines.loop import novelty as density
from pipelines.loop import predlog
from pipelines.loop.labelqueue import QueueItem
from pipelines.loop.novelty import far_groups, more_like

EMBED_BATCH = 128  # logged images decoded and embedded at a time
MAX_PIXELS = 64_000_000  # a logged image was accepted by serving; this only guards decoding
EMBEDDINGS = "embeddings"  # <log>/embeddings/<name>.npz: ids and embeddings computed once


def embed_logged(view: predlog.LogView, store, embed, exclude: set[str], progress=print):
    """(entries, embeddings) of the logged images not in ``exclude`` whose image is still
    there and decodes, embedded ``EMBED_BATCH`` at a time. Embeddings are kept in the log
    (``embeddings/``), so each image is embedded once, never on the request path."""
    size = (embed.input_px, embed.input_px)
    candidates = [e for e in view.entries if e["id"] not in exclude]
    cache = store.path(EMBEDDINGS, f"imagenet-mobilenet_v2-{embed.input_px}px.npz")
    known = _read_embeddings(store, cache)
    missing = [e for e in candidates if e["id"] not in known]
    if missing:
        progress(f"Embedding {len(missing)} logged images ({len(known)} done before)")
    pixels, ids = [], []
    for entry in missing:
        data = predlog.image_bytes(store, entry)
        if data is None:
            continue  # retention removed it
        try:
            pixels.append(decode_upload(data, size, MAX_PIXELS, entry["id"]))
        except BadImage:
            continue
        ids.append(entry["id"])
        if len(pixels) == EMBED_BATCH:
            known |= dict(zip(ids, embed(np.stack(pixels)), strict=True))
            pixels, ids = [], []
    if pixels:
        known |= dict(zip(ids, embed(np.stack(pixels)), strict=True))
    if missing:  # only the log's current images: retention prunes the cache too
        current = {e["id"] for e in view.entries}
        _write_embeddings(store, cache, {k: v for k, v in known.items() if k in current})
    kept = [e for e in candidates if e["id"] in known]
    found = np.stack([known[e["id"]] for e in kept]) if kept else np.zeros((0, 1), np.float32)
    return kept, found.astype(np.float32)


def embedded_view(
    view: predlog.LogView, store, embed, exclude: set[str], progress=print
) -> tuple[predlog.LogView, np.ndarray]:
    """The log narrowed to the images :func:`embed_logged` embeds, and their embeddings
    (row for row): the label queue's ``space`` (``labelqueue.rank``)."""
    kept, logged = embed_logged(view, store, embed, exclude, progress)
    rows = {e["id"]: i for i, e in enumerate(view.entries)}
    features = view.features[[rows[e["id"]] for e in kept]] if kept else view.features[:0]
    return predlog.LogView(kept, features, view.unreadable), logged


def _read_embeddings(store, path: str) -> dict[str, np.ndarray]:
    data = store.read_bytes(path)
    if data is None:
        return {}
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return dict(zip((str(i) for i in z["ids"]), z["vectors"], strict=True))
    except (OSError, ValueError, KeyError):  # a damaged cache is rebuilt
        return {}


def _write_embeddings(store, path: str, vectors: dict[str, np.ndarray]) -> None:
    out = io.BytesIO()
    ids = np.array(list(vectors), dtype=str)
    matrix = np.stack(list(vectors.values())) if vectors else np.zeros((0, 1))
    np.savez(out, ids=ids, vectors=matrix.astype(np.float16))  # float16: half the space
    store.write_bytes(path, out.getvalue())


def like(
    view: predlog.LogView,
    store,
    embed,
    seeds: list[str],
    examples: list[tuple[str, bytes]],
    n: int,
    exclude: set[str] = frozenset(),
    progress=print,
    known: np.ndarray | None = None,
) -> list[QueueItem]:
    """ "More like these": the ``n`` logged images most like (in the ``embed`` embedding,
    e.g. ``pipelines.models.embedding``'s ImageNet one) the seed images, best first: logged
    images by id (``seeds``) and/or (name, bytes) ``examples`` from elsewhere; ``known``:
    the training sample's embeddings (see :func:`like_in`). Seeds and ``exclude`` are never
    picked.

    Raises:
        ValueError: no seed at all, a seed id not in the log (or its image gone), or an
            example that is not a readable image (named).
    """
    size = (embed.input_px, embed.input_px)
    _check_seeds(view.entries, seeds)
    seed_pixels = []
    for name, data in examples:
        try:
            seed_pixels.append(decode_upload(data, size, MAX_PIXELS, name))
        except BadImage as exc:
            raise ValueError(str(exc)) from exc
    if not seeds and not seed_pixels:
        raise ValueError("more like what? give seed image ids or example images")
    kept, found = embed_logged(view, store, embed, set(exclude) - set(seeds), progress)
    if gone := [s for s in seeds if s not in {e["id"] for e in kept}]:
        raise ValueError(f"seed {gone[0]}: its image is gone from the log (retention)")
    extra = embed(np.stack(seed_pixels)) if seed_pixels else None
    return like_in(kept, found, seeds, n, extra, known)


def _check_seeds(entries: list[dict], seeds: list[str]) -> None:
    if missing := [s for s in seeds if s not in {e["id"] for e in entries}]:
        raise ValueError(f"seed {missing[0]} is not in the prediction log (give a logged id)")


def like_in(
    entries: list[dict],
    embeddings: np.ndarray,
    seeds: list[str],
    n: int,
    extra: np.ndarray | None = None,
    known: np.ndarray | None = None,
) -> list[QueueItem]:
    """ "More like these" among ``entries`` with their ``embeddings`` (e.g. the features
    the log keeps): the ``n`` most like the ``seeds`` (ids among the entries) and ``extra``
    seed embeddings, best first, seeds left out. ``known``: the champion's training sample
    in the same embedding; with it, ranked by what sets the seeds apart from it
    (``pipelines.loop.novelty.more_like``), else by similarity to the seeds.

    Raises:
        ValueError: no seed, or a seed id not among the entries.
    """
    _check_seeds(entries, seeds)
    position = {e["id"]: i for i, e in enumerate(entries)}
    rows = [embeddings[position[s]] for s in seeds] + ([] if extra is None else list(extra))
    if not rows:
        raise ValueError("more like what? give seed image ids or example images")
    exclude = np.array([position[s] for s in seeds], int)
    picked, score = more_like(embeddings, np.stack(rows), n, exclude=exclude, known=known)
    why = (
        "like the seeds, unlike the training images (score {:.2f})"
        if known is not None and len(known)
        else "like the seeds (similarity {:.2f})"
    )
    return [
        QueueItem(entries[i], 1 - float(entries[i]["margin"]), None, [why.format(score[i])])
        for i in picked
    ]


def groups(
    view: predlog.LogView,
    store,
    embed,
    training: np.ndarray,
    exclude: set[str] = frozenset(),
    progress=print,
) -> list[list[QueueItem]]:
    """The new-class channel in the ``embed`` embedding (``training``: the training
    sample's embeddings): see :func:`groups_in`."""
    kept, found = embed_logged(view, store, embed, set(exclude), progress)
    return groups_in(kept, found, training)


def groups_in(
    entries: list[dict], embeddings: np.ndarray, training: np.ndarray
) -> list[list[QueueItem]]:
    """The new-class channel: the ``entries`` far from the training data (their
    ``embeddings`` against the ``training`` sample's), in groups that look alike, largest
    first (``pipelines.loop.novelty``). Empty when nothing is far."""
    if not entries:
        return []
    near = density.novelty(embeddings, training)
    out = []
    for number, members in enumerate(far_groups(embeddings, near.far), start=1):
        reason = f"group {number}: {len(members)} alike, unlike any class"
        out.append([
            QueueItem(entries[i], 1 - float(entries[i]["margin"]), float(near.p[i]),
                      [f"{reason} ({near.train_neighbours[i]} of {near.k} neighbours are "
                       f"training images; chance gives {near.expected:.0f})"])
            for i in members
        ])  # fmt: skip
    return out
