"""The whole platform for end-to-end tests: `refit up` (MLflow, Prefect, serving, the
deployments runner) in a temp workspace on free ports, a temp git repo for DVC, tiny
learnable batches (coloured 24x24 images) and fast settings. Started once per session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.conftest import coloured_images, free_port, git_repo

COLOURS = ["red", "green", "blue", "yellow"]  # yellow = red + green: a learnable new class
TOKEN = "live-test-token"
# How long a test waits for a flow run: generous, as a busy machine may be several times
# slower; a healthy run returns as soon as it is done.
RUN_TIMEOUT_S = 600
# How long for a short step of the platform: serving to load a version, a run to appear,
# the prediction log's writer to flush.
SETTLE_S = 180


@dataclass
class LivePlatform:
    env: dict[str, str]
    root: Path

    @property
    def workspace(self) -> Path:
        return Path(self.env["REFIT_WORKSPACE"])

    @property
    def serving_url(self) -> str:
        return f"http://127.0.0.1:{self.env['REFIT_SERVING_PORT']}"

    def refit(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(Path(sys.executable).parent / "refit"), *args],
            env=self.env,
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def batch(self, name: str, classes: list[str], per_class: int, seed: int) -> Path:
        """A folder batch ``<class>/<i>.png`` of coloured images."""
        from PIL import Image

        images = coloured_images(COLOURS, per_class, seed)
        folder = self.root / "batches" / name
        for pixels, label in zip(images.x, images.y, strict=True):
            if COLOURS[label] in classes:
                path = folder / COLOURS[label] / f"{seed}-{len(list(folder.rglob('*')))}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(path)
        return folder

    def queue(self):
        """The submission queue (in the workspace: the live platform's shared store)."""
        from core.objectstore import Store
        from pipelines.data.submissions import Queue

        return Queue(Store(str(self.workspace)), self.workspace / "fetched")

    def prediction_log(self):
        """The log's store and what it holds now (``pipelines.loop.predlog.read_log``)."""
        from core.objectstore import Store
        from pipelines.loop import predlog

        store = Store(str(self.workspace / "predictions"))
        return store, predlog.read_log(store)

    def champion(self) -> str | None:
        from serving.champion import RegistrySource

        url = f"http://127.0.0.1:{self.env['REFIT_MLFLOW_PORT']}"
        return RegistrySource(url, url, "refit-classifier").champion_version()

    def dataset_versions(self) -> list[dict]:
        log = self.workspace / "dataset-versions" / "versions.jsonl"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    def served_version(self) -> str | None:
        model = httpx.get(f"{self.serving_url}/model", timeout=30).json()["model"]
        return model and model["version"]

    def run_env(self) -> None:
        """Point this process's Prefect client at the platform (for core.runs)."""
        os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{self.env['REFIT_PREFECT_PORT']}/api"
        auth = (self.workspace / "prefect-auth").read_text().strip()
        os.environ["PREFECT_API_AUTH_STRING"] = auth
        user, _, password = (self.workspace / "mlflow-auth").read_text().strip().partition(":")
        os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = (
            user,
            password,
        )


# Tiny data, fast polls, a gate that promotes whatever trains: the orchestration is tested.
QUICK = {
    "REFIT_SERVING__POLL_INTERVAL_S": "2",
    "REFIT_ORCHESTRATION__INCOMING_POLL_S": "1",
    "REFIT_ORCHESTRATION__SETTLE_S": "1",
    "REFIT_ORCHESTRATION__RETRY_AFTER_S": "5",
    "REFIT_ORCHESTRATION__WORKER_POLL_S": "1",
    "REFIT_ORCHESTRATION__HTTP_RETRIES": "1",
    "REFIT_ORCHESTRATION__HTTP_RETRY_DELAY_S": "1",
    "REFIT_ORCHESTRATION__SMOKE_IMAGES": "8",
    "REFIT_VALIDATION__MIN_IMAGES_PER_NEW_CLASS": "10",
    "REFIT_FINETUNE__HEAD_EPOCHS": "1",
    "REFIT_FINETUNE__EPOCHS": "1",
    "REFIT_FINETUNE__BATCH_SIZE": "16",
    "REFIT_GATE__MIN_ACCURACY": "0",
    "REFIT_GATE__MIN_DELTA": "-1",
    "REFIT_GATE__MAX_RECALL_DROP": "1",
    "REFIT_GATE__MAX_OLD_ACCURACY_DROP": "1",
    "REFIT_GATE__NEW_CLASS_MIN_RECALL": "0",
}


def start_platform(root: Path) -> LivePlatform:
    repo = git_repo(root / "repo")
    env = {
        **os.environ,
        "REFIT_WORKSPACE": str(root / "workspace"),
        "REFIT_CONFIG": str(root / "no-refit.toml"),
        "REFIT_DVC_REPO": str(repo),
        "REFIT_MLFLOW_PORT": str(free_port()),
        "REFIT_PREFECT_PORT": str(free_port()),
        "REFIT_SERVING_PORT": str(free_port()),
        "REFIT_WORKER_PORT": str(free_port()),
        "REFIT_SERVING__ADMIN_TOKEN": TOKEN,
        "REFIT_FAILPOINTS": str(root / "failpoints"),  # the fault-matrix drills (core.faults)
        "COLUMNS": "200",  # `refit status` tables whole
        **QUICK,
    }
    platform = LivePlatform(env, root)
    started = platform.refit("up", timeout=300)
    if started.returncode != 0:
        platform.refit("down")
        raise RuntimeError(f"refit up failed:\n{started.stdout}\n{started.stderr}")
    return platform


def tiny_model_file(path: Path) -> Path:
    """A 3-colour classifier trained for a few epochs, saved as a Refit .keras file."""
    from core.policies import ArchitectureConfig, TrainConfig
    from pipelines.models.modelfile import save_model
    from pipelines.training.scratch import fit_from_scratch

    model, _ = fit_from_scratch(
        coloured_images(COLOURS[:3], 30, 0),
        ArchitectureConfig(input_size=24, widths=(8, 16, 16)),
        TrainConfig(epochs=4, batch_size=16, val_share=0.1, patience=0, peak_lr=0.05),
        progress=lambda m: None,
    )
    return save_model(model, path)


def ensure_champion(live: LivePlatform) -> str:
    """Run the bootstrap flow with a tiny user model if the platform has no champion yet."""
    from core import runs

    if live.champion() is None:
        model = tiny_model_file(live.root / "user-model.keras")
        seed = live.batch("seed", COLOURS[:3], 30, seed=1)
        run_id = runs.start("bootstrap/bootstrap", {"model": str(model), "seed": str(seed)})
        final = runs.follow(run_id, lambda view: None, timeout_s=RUN_TIMEOUT_S)
        assert final.state == "COMPLETED", final.message
    version = live.champion()
    wait_for(lambda: live.served_version() == version, SETTLE_S, f"serving to load v{version}")
    return version


def wait_for(predicate, timeout: float, what: str, poll: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
