"""Shared fixtures: isolated settings, free ports and temporary workspaces."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

# Before TensorFlow or MLflow load in any test: oneDNN on (2x faster here), quiet, no telemetry.
for _name, _value in {
    "TF_ENABLE_ONEDNN_OPTS": "1",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
}.items():
    os.environ.setdefault(_name, _value)
# The label queue's default embedding (ImageNet) adds about 10 s to every registration: the
# tests that exercise it ask for it (tests/unit/test_loop_steps.py, the team topology).
QUEUE_EMBEDDING = "champion"
os.environ["REFIT_LOOP__QUEUE_EMBEDDING"] = QUEUE_EMBEDDING


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


GROUPS_FIRST = ("live-faults", "live")  # the longest groups, each with its own platform


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Groups for pytest-xdist (`--dist loadgroup`): the tests on a live platform in two (the
    fault drills, and the rest), each on one worker with its own platform and first in line;
    every other end-to-end module one group (its tests share module fixtures and some build
    on the one before), then the unit tests."""

    def group(item: pytest.Item) -> str | None:
        if "live" in getattr(item, "fixturenames", ()):
            return "live-faults" if item.path.name == "test_faults.py" else "live"
        return item.path.stem if item.path.parent.name in ("e2e", "browser") else None

    groups = {item: group(item) for item in items}
    for item, name in groups.items():
        if name is not None:
            item.add_marker(pytest.mark.xdist_group(name))
    if hasattr(config, "workerinput"):  # on an xdist worker (the same order on each)
        rank = {name: i for i, name in enumerate(GROUPS_FIRST)}
        # stable: file order within each rank; unit tests last
        items.sort(key=lambda item: rank.get(groups[item], 2 if groups[item] else 3))


@pytest.fixture(autouse=True)
def _isolated_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test reads the developer's REFIT_* variables or refit.toml (the queue's embedding
    aside, above)."""
    for name in list(os.environ):
        if name.startswith("REFIT_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("REFIT_CONFIG", str(tmp_path / "no-such-refit.toml"))
    monkeypatch.setenv("REFIT_LOOP__QUEUE_EMBEDDING", QUEUE_EMBEDDING)
    from core.settings import get_settings

    get_settings.cache_clear()


@pytest.fixture
def refit_env(tmp_path: Path) -> dict[str, str]:
    """Environment for a `refit` subprocess: its own workspace and free ports."""
    return {
        **os.environ,
        "REFIT_WORKSPACE": str(tmp_path / "workspace"),
        "REFIT_MLFLOW_PORT": str(free_port()),
        "REFIT_PREFECT_PORT": str(free_port()),
        "REFIT_SERVING_PORT": str(free_port()),
        "REFIT_WORKER_PORT": str(free_port()),
    }


def write_image(
    path: Path,
    seed: int,
    size: tuple[int, int] = (24, 24),
    mode: str = "RGB",
    fmt: str | None = None,
    **save_args,
) -> Path:
    """A small distinct image (seeded noise), saved in the format its suffix names."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGB")
    if mode != "RGB":
        image = image.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=fmt, **save_args)
    return path


def write_class_folders(
    root: Path, counts: dict[str, int], seed: int = 0, suffix: str = ".png"
) -> Path:
    """A batch of class sub-folders: ``root/<class>/<i>.png`` with distinct images."""
    for c, (label, n) in enumerate(sorted(counts.items())):
        for i in range(n):
            write_image(root / label / f"{i:04d}{suffix}", seed=seed * 100_000 + c * 1000 + i)
    return root


def git_repo(path: Path) -> Path:
    """An empty git repository at ``path`` (DVC tracks the dataset inside one)."""
    import subprocess

    path.mkdir(parents=True)
    subprocess.run(["git", "init", "-q"], cwd=path, check=True)
    return path


def coloured_images(classes: list[str], per_class: int, seed: int, size: int = 24):
    """An ImageSet whose class is its dominant colour channel(s) plus noise: learnable fast.
    Classes 0-2 light one channel each; classes 3-5 light two."""
    import numpy as np

    from pipelines.images.decode import ImageSet

    rng = np.random.default_rng(seed)
    x = rng.integers(0, 90, (len(classes) * per_class, size, size, 3)).astype(np.uint8)
    y = np.repeat(np.arange(len(classes)), per_class)
    for i, label in enumerate(y):
        x[i, :, :, label % 3] += 150
        if label >= 3:
            x[i, :, :, (label + 1) % 3] += 150
    return ImageSet(x, y, list(classes))


@pytest.fixture(scope="session")
def imagenet_weights(tmp_path_factory) -> Path:
    """A weights folder holding the ImageNet embedding, built once per test process (seconds
    each time): copy it to where a test's ``weights_dir`` is."""
    from pipelines.models.imagenet import imagenet_embedding

    folder = tmp_path_factory.mktemp("weights")
    imagenet_embedding(folder, progress=lambda m: None)
    return folder


@pytest.fixture(scope="session")
def live(tmp_path_factory):
    """The whole platform (`refit up`) on free ports, shared by the tests that need it."""
    from tests.live_platform import start_platform

    platform = start_platform(tmp_path_factory.mktemp("live"))
    platform.run_env()
    yield platform
    platform.refit("down")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 API server (moto) on a free port, with credentials in the environment."""
    from tests.servers import S3_CREDENTIALS, start_s3

    os.environ.update(S3_CREDENTIALS)
    server = start_s3("127.0.0.1", free_port(), tmp_path_factory.mktemp("s3") / "moto.log")
    yield server
    server.stop()
