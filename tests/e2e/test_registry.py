"""Real MLflow (sqlite in a temp dir): first run, pass, fail, rollback and its history,
export round trip, figures as artifacts with class names, and a server that is down."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from core.policies import ArchitectureConfig, GatePolicy, TrainConfig
from pipelines.images.decode import ImageSet
from pipelines.judge.candidate import judge
from pipelines.judge.registry import Registry
from pipelines.judge.registry_client import RegistryConfig, RegistryError, RegistryUnavailable
from pipelines.judge.registry_writes import CandidateRun
from pipelines.models.modelfile import load_refit_model
from pipelines.models.predict import predict_proba
from pipelines.training.scratch import fit_from_scratch
from tests.conftest import coloured_images, free_port

pytestmark = pytest.mark.e2e

CLASSES = ["red", "green", "blue"]
SPEC = ArchitectureConfig(input_size=24, widths=(8, 16, 16))
# Non-inferiority: a model as good as the champion passes, so the alias moves can be driven
# by the same model (the default, superiority, never promotes the champion again: below).
POLICY = GatePolicy(min_accuracy=0.5, mode="non_inferiority", margin=0.05, max_recall_drop=0.2)


def _prediction_log(tmp_path: Path, images: np.ndarray):
    """A prediction log of ``images``, written as serving writes it."""
    import io

    from PIL import Image

    from core.objectstore import Store
    from core.settings import LoopConfig
    from pipelines.loop.predlog import LogWriter

    store = Store(str(tmp_path / "predictions"))
    writer = LogWriter(store, LoopConfig(), start=False)
    uploads = []
    for i, pixels in enumerate(images):
        out = io.BytesIO()
        Image.fromarray(pixels).save(out, "PNG")
        uploads.append((f"{i}.png", out.getvalue()))
    probs = np.full((len(images), len(CLASSES)), 1 / len(CLASSES))
    writer.record(uploads, "1", CLASSES, probs, np.zeros((len(images), 4)))
    writer.close()
    return store


def coloured(per_class: int, seed: int) -> ImageSet:
    return coloured_images(CLASSES, per_class, seed)


@pytest.fixture(scope="module")
def models():
    """A good model (trained a few epochs) and a useless one (no training)."""
    good, result = fit_from_scratch(coloured(30, 0), SPEC, TrainConfig(
        epochs=6, batch_size=16, val_share=0.1, patience=0, time_budget_s=120, peak_lr=0.05),
        progress=lambda m: None)  # fmt: skip
    bad, _ = fit_from_scratch(coloured(3, 1), SPEC, TrainConfig(
        epochs=1, batch_size=16, val_share=0.34, patience=0, time_budget_s=60, peak_lr=1e-6),
        progress=lambda m: None)  # fmt: skip
    return good, bad, result.history


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return Registry(RegistryConfig(uri, uri, "refit-test", str(tmp_path / "artifacts")))


def test_first_run_pass_fail_rollback_history_export(registry, models, tmp_path: Path) -> None:
    good, bad, curves = models
    holdout = coloured(10, 99)
    assert registry.alias_version("champion") is None

    first = judge(good, holdout, registry, POLICY, CandidateRun("bootstrap good", curves=curves,
                  tags={"batch_id": "batch-1"}))  # fmt: skip
    assert first.promoted and first.decision.baseline == "no baseline"
    assert registry.alias_version("champion") == first.version

    log = _prediction_log(tmp_path, holdout.x[:12])
    worse = judge(bad, holdout, registry, POLICY, CandidateRun("finetune bad"), log_store=log)
    assert not worse.promoted and worse.decision.shadow.images == 12
    assert registry.alias_version("champion") == first.version  # the alias did not move
    assert worse.decision.baseline == f"champion v{first.version}"

    again = judge(good, holdout, registry, POLICY, CandidateRun("finetune equal"))  # no worse
    assert again.promoted and registry.alias_version("previous") == first.version

    rows = {v.version: v for v in registry.versions()}
    assert rows[again.version].aliases == ["champion"]
    assert rows[first.version].aliases == ["previous"]
    assert rows[worse.version].decision == "failed"
    assert rows[first.version].class_names == CLASSES

    # The champion's own weights again, under the default gate (superiority): never promoted.
    default = GatePolicy(min_accuracy=0.5)
    same = judge(good, holdout, registry, default, CandidateRun("the champion again"))
    assert not same.promoted and same.decision.outcome == "inconclusive"
    assert registry.alias_version("champion") == again.version
    assert registry.versions()[0].decision == "inconclusive"

    assert registry.rollback("bad numbers in production") == first.version
    assert registry.alias_version("champion") == first.version
    history = registry.history()
    assert [h["action"] for h in history] == ["promote", "promote", "rollback"]
    assert history[-1]["reason"] == "bad numbers in production"
    assert history[-1]["from_version"] == again.version and history[-1]["who"]

    # The exported file predicts exactly what the registered champion predicts.
    for suffix in (".keras", ".h5"):
        out = registry.export("champion", tmp_path / f"champion{suffix}")
        exported = load_refit_model(out) if suffix == ".keras" else None
        if exported is not None:
            assert exported.class_names == CLASSES
            np.testing.assert_allclose(predict_proba(exported.model, holdout.x),
                                       predict_proba(registry.load("champion").model, holdout.x),
                                       atol=1e-6)  # fmt: skip
        assert out.stat().st_size > 0

    # Figures and reports are artifacts of the run, with class names in them.
    artifacts = {a.path for a in registry.client.list_artifacts(first.run_id, "evaluation")}
    for name in (
        "confusion_counts.png",
        "confusion_normalised.png",
        "calibration.png",
        "worst_mistakes.png",
        "confusion.json",
        "training_curves.png",
    ):
        assert f"evaluation/{name}" in artifacts
    local = registry.client.download_artifacts(first.run_id, "evaluation/confusion.json",
                                               str(tmp_path))  # fmt: skip
    assert json.loads(Path(local).read_text())["class_names"] == CLASSES
    champion_figures = {a.path for a in registry.client.list_artifacts(worse.run_id, "evaluation")}
    assert "evaluation/champion_confusion_counts.png" in champion_figures
    assert "evaluation/negative_flips.png" in champion_figures  # what it got wrong, as images
    page = registry.client.download_artifacts(worse.run_id, "reports/report.html", str(tmp_path))
    assert "negative flips" in Path(page).read_text() and "base64," in Path(page).read_text()
    judged = registry.client.get_run(worse.run_id).data.metrics
    assert judged["gate.losses"] > 0 and 0 <= judged["shadow.agreement"] <= 1
    run = registry.client.get_run(first.run_id)
    assert run.data.tags["gate"] == "passed" and run.data.tags["batch_id"] == "batch-1"
    assert run.info.run_name == "bootstrap good"
    assert len(registry.client.get_metric_history(first.run_id, "loss")) == len(curves["loss"])


def test_rollback_without_previous_and_missing_alias_are_errors(registry) -> None:
    with pytest.raises(RegistryError, match="no previous version"):
        registry.rollback("nothing to go back to")
    with pytest.raises(RegistryError, match="no version with alias 'champion'"):
        registry.load("champion")


def test_server_down_is_retried_then_a_clear_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    down = Registry(RegistryConfig(url, url, "refit-test", retries=2, backoff_s=0.05))
    with pytest.raises(RegistryUnavailable, match="did not answer"):
        down.alias_version("champion")


def test_new_class_path_is_judged_on_old_classes_and_new_recall(registry, models) -> None:
    from core.policies import FinetuneConfig
    from pipelines.training.finetune import finetune

    good, _, _ = models
    first = judge(good, coloured(10, 99), registry, POLICY, CandidateRun("bootstrap good"))
    assert first.promoted
    new = coloured_images(["red", "yellow"], 20, 7)  # yellow: red + green channels
    old = coloured(20, 8)
    grown, _ = finetune(
        good,
        new,
        old,
        FinetuneConfig(head_epochs=1, epochs=3, batch_size=16, time_budget_s=60),
        progress=lambda m: None,
    )
    holdout = coloured_images([*CLASSES, "yellow"], 10, 98)
    outcome = judge(grown, holdout, registry, POLICY, CandidateRun("finetune +yellow batch-2"))
    names = {c.name for c in outcome.decision.checks}
    assert names == {"min_accuracy", "old_class_accuracy", "new_class_recall.yellow"}
    assert outcome.decision.new_classes == ["yellow"]
    assert outcome.champion is not None and outcome.champion.class_names == CLASSES
    run = registry.client.get_run(outcome.run_id)
    assert "new_class_recall.yellow" in run.data.tags["gate.reasons"]
    assert run.data.tags["parent_version"] == first.version
    expected = first.version if not outcome.promoted else outcome.version
    assert registry.alias_version("champion") == expected


def _torn_once(registry: Registry, alias: str) -> None:
    """The next move of ``alias`` dies as a killed process would leave it (nothing after)."""
    real = registry.client.set_registered_model_alias

    def dying(name, which, version):
        if which == alias:
            registry.client.set_registered_model_alias = real
            raise KeyboardInterrupt(f"killed before moving {alias}")
        return real(name, which, version)

    registry.client.set_registered_model_alias = dying


def test_a_promotion_cut_short_is_completed_by_the_next_reader(registry, models) -> None:
    good, _, _ = models
    holdout = coloured(10, 99)
    first = judge(good, holdout, registry, POLICY, CandidateRun("first"))
    _torn_once(registry, "previous")  # champion moves, then the process dies
    with pytest.raises(KeyboardInterrupt):
        judge(good, holdout, registry, POLICY, CandidateRun("second"))
    second = str(int(first.version) + 1)
    assert registry.alias_version("champion") == second

    fresh = Registry(registry.config)  # another process: the CLI, the next run
    assert [h["version"] for h in fresh.history()] == [first.version, second]
    assert fresh.alias_version("previous") == first.version
    assert fresh.rollback("the second was bad") == first.version  # rollback still works
    assert fresh.alias_version("champion") == first.version


def test_a_promotion_killed_before_the_champion_moved_leaves_it(registry, models) -> None:
    good, _, _ = models
    holdout = coloured(10, 99)
    first = judge(good, holdout, registry, POLICY, CandidateRun("first"))
    _torn_once(registry, "champion")
    with pytest.raises(KeyboardInterrupt):
        judge(good, holdout, registry, POLICY, CandidateRun("second"))
    fresh = Registry(registry.config)
    assert fresh.alias_version("champion") == first.version
    assert fresh.complete_pending() is not None  # the intent is dropped, nothing moved
    assert [h["version"] for h in fresh.history()] == [first.version]
    assert fresh.alias_version("previous") is None


def test_promotion_is_a_compare_and_set_on_the_judged_champion(registry, models) -> None:
    """A rollback made while a challenger was judged is not silently undone."""
    from pipelines.judge.candidate import assess, current_champion, record

    good, _, _ = models
    holdout = coloured(10, 99)
    first = judge(good, holdout, registry, POLICY, CandidateRun("first"))
    second = judge(good, holdout, registry, POLICY, CandidateRun("second"))
    assessment = assess(good, holdout, POLICY, current_champion(registry))  # against v2
    registry.rollback("rolled back while the challenger trained")  # champion: v1 again
    late = record(assessment, good, registry, CandidateRun("late"))
    assert assessment.decision.passed and not late.promoted
    assert "not promoted" in late.note and f"v{first.version}" in late.note
    assert registry.alias_version("champion") == first.version
    tags = registry.client.get_model_version(registry.name, late.version).tags
    assert tags["parent_version"] == second.version  # judged against, and says so
    assert "not promoted" in tags["gate.not_promoted"]


def test_a_version_is_downloaded_once_per_host(models, tmp_path: Path) -> None:
    """With a cache, loading a version again reads the local copy (the artifact store is not
    asked: here it is gone), answers the same, and only the newest copies are kept."""
    import shutil

    good, bad, _ = models
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cache = tmp_path / "model-cache"
    registry = Registry(RegistryConfig(uri, uri, "refit-test", str(tmp_path / "artifacts"),
                                       cache_dir=cache))  # fmt: skip
    holdout = coloured(10, 99)
    first = judge(good, holdout, registry, POLICY, CandidateRun("good"))
    loaded = registry.load("champion")
    assert [p.name.split("-")[0] for p in cache.iterdir()] == [f"v{first.version}"]
    shutil.rmtree(tmp_path / "artifacts")  # what a second load would have to download
    again = registry.load(first.version)
    assert again.class_names == CLASSES and again.card["version"] == first.version
    np.testing.assert_allclose(
        predict_proba(again.model, holdout.x), predict_proba(loaded.model, holdout.x), atol=1e-6
    )

    (tmp_path / "artifacts").mkdir()
    versions = [judge(bad, holdout, registry, POLICY, CandidateRun(f"bad {i}")).version
                for i in range(4)]  # fmt: skip
    for version in versions:
        registry.load(version)
    kept = sorted(p.name.split("-")[0] for p in cache.iterdir())
    assert kept == sorted(f"v{v}" for v in versions)  # the oldest copy went first


def test_manual_approval_waits_then_a_person_decides(registry, models) -> None:
    """gate.approval = manual on the real registry: a blessed challenger waits (tagged, so
    any process sees it), is approved or rejected with who and why in the history, never over
    a champion that moved since, and times out."""
    from pipelines.judge import approval
    from pipelines.judge.approval import NotAwaiting
    from pipelines.judge.registry_client import ChampionMoved

    good, _, _ = models
    holdout = coloured(10, 99)
    manual = POLICY.model_copy(update={"approval": "manual"})
    first = judge(good, holdout, registry, manual, CandidateRun("first"))
    assert first.awaiting and not first.promoted and registry.alias_version("champion") is None
    fresh = Registry(registry.config)  # another process (a restarted worker, the CLI)
    assert [w.version for w in approval.waiting(fresh)] == [first.version]
    approval.approve(fresh, first.version, "looks right", who="ana")
    assert registry.alias_version("champion") == first.version
    with pytest.raises(NotAwaiting, match="already decided: approved by ana"):
        approval.approve(fresh, first.version, "again")
    good, bad, _ = models
    refused = judge(bad, holdout, registry, POLICY, CandidateRun("auto, refused"))
    with pytest.raises(NotAwaiting, match="does not wait"):
        approval.reject(fresh, refused.version, "never waited")

    second = judge(good, holdout, registry, manual, CandidateRun("second"))
    third = judge(good, holdout, registry, manual, CandidateRun("third"))
    approval.approve(registry, third.version, "the newer one")
    with pytest.raises(ChampionMoved):  # judged against v1; the champion is v3 now
        approval.approve(registry, second.version, "late")
    assert registry.alias_version("champion") == third.version
    assert [w.version for w in approval.waiting(registry)] == [second.version]  # still waits
    approval.reject(registry, second.version, "superseded", who="ben")

    fourth = judge(good, holdout, registry, manual, CandidateRun("fourth"))
    assert approval.expire(registry, timeout_h=1.0) == []  # not yet
    later = time.time() + 2 * 3600
    assert approval.expire(registry, timeout_h=1.0, now=later) == [fourth.version]
    assert registry.alias_version("champion") == third.version
    history = [(h["action"], h["version"], h["who"]) for h in registry.history()]
    assert history == [
        ("approve", first.version, "ana"),
        ("approve", third.version, history[1][2]),
        ("reject", second.version, "ben"),
        ("approval timed out", fourth.version, "refit"),
    ]
    assert registry.history()[2]["reason"] == "superseded"

    # Fine-tuned from a model file: lineage names the file, the approval the judged champion.
    run = CandidateRun("from a file", tags={"parent_version": "a model file"})
    from_file = judge(good, holdout, registry, manual, run)
    approval.approve(registry, from_file.version, "fine-tuned from a file")
    assert registry.alias_version("champion") == from_file.version


def test_when_inconclusive_asks_only_about_the_undecided(registry, models) -> None:
    good, bad, _ = models
    holdout = coloured(10, 99)
    asks = GatePolicy(min_accuracy=0.5, approval="when_inconclusive")
    first = judge(good, holdout, registry, asks, CandidateRun("first"))  # no baseline: blessed
    assert first.promoted and not first.awaiting
    same = judge(good, holdout, registry, asks, CandidateRun("the champion again"))
    assert same.decision.outcome == "inconclusive" and same.awaiting
    worse = judge(bad, holdout, registry, asks, CandidateRun("bad"))
    assert worse.decision.outcome == "refused" and not worse.awaiting


def test_live_accuracy_rolls_a_worse_champion_back_once(registry, models, tmp_path) -> None:
    """On the real registry and a real prediction log: a champion worse than the previous
    version on labelled production images is rolled back (recorded, logged to the monitoring
    experiment), and an automatic rollback is never undone automatically (no flapping)."""
    from pipelines.judge import live
    from pipelines.loop import labelqueue, predlog
    from pipelines.models.predict import predict_proba

    good, bad, _ = models
    holdout = coloured(10, 99)
    first = judge(good, holdout, registry, POLICY, CandidateRun("good"))
    worse = judge(bad, holdout, registry, POLICY, CandidateRun("bad"))
    registry.promote(worse.version, "a person insisted")  # the champion is now the bad one
    traffic = coloured(10, 5)
    store = _prediction_log(tmp_path, traffic.x)
    ids = [e["id"] for e in predlog.read_log(store).entries]
    truth = {i: CLASSES[y] for i, y in zip(ids, traffic.y, strict=True)}
    labelqueue.record_labelled(store, "sub-1", truth, truth)  # all kept out of training

    few = live.check(registry, store, min_labels=31, alpha=0.05, auto_rollback=True)
    assert few.status == "too-few" and not few.rolled_back and "no verdict" in few.message
    found = live.check(registry, store, min_labels=20, alpha=0.05, auto_rollback=True)
    assert found.worse and found.rolled_back, found.message
    assert registry.alias_version("champion") == first.version
    assert registry.history()[-1]["action"] == "auto-rollback"
    checks = registry.check_history("live.champion_accuracy")
    assert len(checks) == 2 and checks[-1][1] < 0.7  # the bad one's accuracy, over time

    # Labels now agree with the bad model: the restored champion looks worse, but it is
    # the result of an automatic rollback, so it is not swapped back (told, not done).
    answers = predict_proba(bad.model, traffic.x).argmax(axis=1)
    flipped = {i: CLASSES[a] for i, a in zip(ids, answers, strict=True)}
    labelqueue.record_labelled(store, "sub-2", flipped, flipped)
    again = live.check(registry, store, min_labels=20, alpha=0.05, auto_rollback=True)
    assert again.worse and not again.rolled_back and "cannot flap" in again.message
    assert registry.alias_version("champion") == first.version


def test_the_serving_engine_is_built_at_registration_and_checked_on_load(
    registry, models, tmp_path
) -> None:
    """The registry holds the ONNX engine and its check; serving loads it without converting,
    and falls back to Keras, saying why, when the file is corrupt or missing; a version
    registered before engines were built is converted on load as before."""
    from serving.champion import RegistrySource

    good, _, _ = models
    version = judge(good, coloured(10, 99), registry, POLICY, CandidateRun("engine")).version
    run_id = registry.client.get_model_version(registry.name, version).run_id
    stored = {a.path for a in registry.client.list_artifacts(run_id, "engine")}
    assert stored == {"engine/model.onnx", "engine/check.json", "engine/expected.npy"}
    source = RegistrySource(registry.config.tracking_uri, registry.config.registry_uri,
                            registry.name)  # fmt: skip
    loaded = source.load(version, "auto", 1e-5)
    assert loaded.engine.name == "onnx" and "built at registration" in loaded.engine_note
    assert loaded.input_size == (24, 24)
    # deferred (the classifier worker beside a public worker that serves it): loaded on use
    images = np.random.default_rng(0).integers(0, 256, (5, 24, 24, 3), dtype=np.uint8)
    lazy = source.load(version, "auto", 1e-5, deferred=True)
    assert "first use" in lazy.describe()["engine_note"]
    np.testing.assert_allclose(lazy.predict(images)[0], loaded.predict(images)[0], atol=1e-6)
    assert "built at registration (max diff" in lazy.describe()["engine_note"]

    files = next((tmp_path / "artifacts").rglob("engine/model.onnx")).parent
    expected = np.load(files / "expected.npy")
    np.save(files / "expected.npy", expected + 0.5)  # the engine disagrees with Keras here
    for deferred in (False, True):
        differs = source.load(version, "auto", 1e-5, deferred=deferred)
        differs.predict(images)
        assert differs.engine.name == "keras" and "differs" in differs.describe()["engine_note"]
    np.save(files / "expected.npy", expected)
    (files / "model.onnx").write_bytes(b"not an onnx graph")
    corrupt = source.load(version, "auto", 1e-5)
    assert corrupt.engine.name == "keras" and "corrupt" in corrupt.engine_note
    (files / "model.onnx").unlink()
    missing = source.load(version, "auto", 1e-5)
    assert missing.engine.name == "keras" and "missing" in missing.engine_note
    for path in files.iterdir():  # as registered before engines were built
        path.unlink()
    converted = source.load(version, "auto", 1e-5)
    assert converted.engine.name == "onnx" and "registration" not in converted.engine_note
