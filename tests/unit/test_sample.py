"""The embedded CIFAR-10 sample unpacks to the planned class counts, parts are disjoint,
and cutting it again from the shared tarball reproduces the committed archive exactly."""

import hashlib
from pathlib import Path

import pytest

from core.settings import Settings
from pipelines.data.sample import NEW_CLASS, SamplePlan, cut_sample, unpack_sample


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    dest = tmp_path_factory.mktemp("sample")
    return dest, unpack_sample(Settings().sample_archive, dest)


def test_unpacks_to_expected_class_counts(unpacked: tuple[Path, dict]) -> None:
    _, counts = unpacked
    assert counts == SamplePlan().expected_counts()


def test_seed_train_has_no_truck_and_holdout_has_all_ten(unpacked: tuple[Path, dict]) -> None:
    _, counts = unpacked
    assert NEW_CLASS not in counts["seed/train"]
    assert len(counts["seed/holdout"]) == 10
    assert counts["incoming"][NEW_CLASS] > 0


def test_parts_are_disjoint(unpacked: tuple[Path, dict]) -> None:
    root, _ = unpacked

    def names(part: str) -> set[str]:
        return {str(p.relative_to(root / part)) for p in (root / part).rglob("*.jpg")}

    def digests(part: str) -> set[str]:
        return {hashlib.sha256(p.read_bytes()).hexdigest() for p in (root / part).rglob("*.jpg")}

    parts = ["seed/train", "seed/holdout", "incoming"]
    for i, a in enumerate(parts):
        for b in parts[i + 1 :]:
            assert not names(a) & names(b), f"{a} and {b} share files"
            assert not digests(a) & digests(b), f"{a} and {b} share image bytes"


def test_missing_archive_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="embedded sample not found"):
        unpack_sample(tmp_path / "nope.tar.gz", tmp_path / "out")


def test_cut_is_reproducible(tmp_path: Path) -> None:
    settings = Settings()
    if not settings.cifar10_archive.is_file():
        pytest.skip(f"{settings.cifar10_archive} not present")
    recut = tmp_path / "recut.tar.gz"
    cut_sample(settings.cifar10_archive, recut, settings.sample_seed)
    assert recut.read_bytes() == settings.sample_archive.read_bytes()
