"""The one typed settings object of Refit.

Every path, port, host, name and threshold lives here and nowhere else. Values come from,
highest precedence first: keyword arguments, environment variables (``REFIT_*``), a TOML
file (``refit.toml`` in the working directory, or the file named by ``REFIT_CONFIG``), and
the defaults below. Derived values (URIs that point into the workspace, server URLs built
from host and port) are filled in after loading unless set explicitly.

Nothing here has side effects at import time: no directory is created and no library is
configured until a caller asks for it (:meth:`Settings.ensure_workspace`,
:func:`tool_environment`).
"""

from __future__ import annotations

import os
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from core.notify import NotifyConfig
from core.policies import (
    ArchitectureConfig,
    FinetuneConfig,
    GatePolicy,
    IngestLimits,
    Section,
    SplitPolicy,
    TrainConfig,
    ValidationPolicy,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_ENV_VAR = "REFIT_CONFIG"


class OrchestrationConfig(Section):
    """Prefect flows and deployments (``flows/``): triggers, schedule, retries."""

    schedule_cron: str = Field(
        default="0 3 * * 1", description="When a retrain takes every pending batch."
    )
    schedule_timezone: str = Field(default="UTC", description="Time zone of the cron.")
    incoming_poll_s: float = Field(
        default=5.0, description="How often the watcher looks for files dropped in incoming/."
    )
    settle_s: float = Field(
        default=5.0, description="A dropped file is taken once unchanged for this long."
    )
    retry_after_s: float = Field(
        default=120.0,
        description="A pending submission no run has in hand is announced again after this.",
    )
    http_retries: int = Field(default=3, description="Retries of serving/MLflow HTTP steps.")
    http_retry_delay_s: float = Field(default=5.0, description="Pause between those retries.")
    train_timeout_s: float = Field(default=3600, description="A fine-tune taking longer fails.")
    smoke_images: int = Field(default=64, description="Holdout images sent to the live server.")
    smoke_min_agreement: float = Field(
        default=0.98, description="Share of live answers that must match the offline ones."
    )
    work_pool: str = Field(default="refit", description="Prefect work pool the flows run on.")
    run_worker: bool = Field(
        default=True, description="Whether `refit up` runs a worker here (off on a servers host)."
    )
    watch_drop_folder: bool = Field(
        default=True, description="Whether `refit up` runs the drop-folder watcher here."
    )
    worker_name: str | None = Field(
        default=None, description="Name of this host's worker (default: host name + port)."
    )
    worker_poll_s: float = Field(
        default=10.0, description="How often a worker asks the Prefect server for runs."
    )
    heartbeat_s: int = Field(
        default=30, description="How often a running flow tells Prefect it is alive (>= 30)."
    )
    crashed_after_s: int = Field(
        default=90,
        description="A running flow silent this long is marked crashed (its host died).",
    )
    lock_lease_s: float = Field(
        default=60.0,
        ge=60.0,
        description="A dataset lock whose holder died frees itself after this (Prefect's "
        "shortest lease is 60 s).",
    )


class ServingConfig(Section):
    """The prediction server (``serving/``): batching, hot swap, upload limits."""

    max_batch_size: int = Field(default=64, description="Most images per inference call.")
    max_latency_ms: int = Field(
        default=2000,
        description="Adaptive batching budget; a request waiting longer gets 503 (overloaded).",
    )
    poll_interval_s: float = Field(
        default=10.0, description="How often the server checks whether `champion` moved."
    )
    engine: str = Field(
        default="auto",
        description="auto (ONNX Runtime when it matches Keras within 1e-5), onnx or keras.",
    )
    onnx_tolerance: float = Field(
        default=1e-5, description="Largest probability difference ONNX may have vs Keras."
    )
    threads: int = Field(
        default=0,
        ge=0,
        description="Inference threads per replica; 0: the CPUs it may use (its affinity and "
        "container CPU limit). Replicas sharing a host: its cores / replicas each.",
    )
    public_worker_engine: bool = Field(
        default=True,
        description="The public worker runs the champion's ONNX engine built at registration "
        "itself, batching concurrent requests (no hop to the classifier worker); versions "
        "without one are served by the classifier worker through BentoML's batcher.",
    )
    max_upload_bytes: int = Field(
        default=20_000_000, description="Largest request body (413 beyond)."
    )
    max_dataset_upload_bytes: int = Field(
        default=4_000_000_000, description="Largest batch or model upload on the Retrain page."
    )
    max_image_pixels: int = Field(
        default=40_000_000, description="Largest decoded image (decompression-bomb guard)."
    )
    max_batch_images: int = Field(default=64, description="Most images in one predict_batch.")
    top_k: int = Field(default=5, description="Labels returned per image by default.")
    public_url: str | None = Field(
        default=None,
        description="Where clients reach serving (a load balancer); default: the local server. "
        "When set, `refit up` starts no serving of its own.",
    )
    replicas: list[str] = Field(
        default_factory=list,
        description="URL of each serving replica: a retrain reloads each and reports done only "
        "when all answer with the new champion (default: the public URL).",
    )
    admin_token: SecretStr | None = Field(
        default=None,
        description="Token for reload, retrain and model upload (default: generated by "
        "`refit up` into the workspace).",
    )
    admin_token_file: Path | None = Field(
        default=None, description="A file holding the admin token (a mounted secret)."
    )
    session_hours: float = Field(
        default=12.0, gt=0, description="How long a console sign-in lasts."
    )
    console_public: bool = Field(
        default=False,
        description="The console's read-only views (champion, history, runs, monitoring) "
        "open to anyone who reaches the server; acting and downloads always need a sign-in "
        "or the token.",
    )
    metrics_public: bool = Field(
        default=True,
        description="/metrics (Prometheus) open to anyone who reaches the server; false: it "
        "needs the token (or a sign-in).",
    )


class LoopConfig(Section):
    """Closing the loop: the prediction log, drift checks and the label queue."""

    log_predictions: bool = Field(
        default=True, description="Serving records live requests in the prediction log."
    )
    sample_rate: float = Field(
        default=1.0, ge=0, le=1, description="Share of requests the log records."
    )
    log_url: str | None = Field(
        default=None,
        description="Where the prediction log lives (a folder or s3://...; default: "
        "`predictions/` in the shared store).",
    )
    max_log_bytes: int = Field(
        default=2_000_000_000, description="The log's size cap: the oldest entries go first."
    )
    max_log_age_days: float = Field(default=30.0, description="Entries older than this go.")
    flush_s: float = Field(
        default=2.0, description="How often the background writer writes what it holds."
    )
    max_pending: int = Field(
        default=2000, description="Entries held for the writer; beyond, new ones are dropped."
    )
    drift_images: int = Field(default=1000, description="Newest log entries a drift check uses.")
    queue_images: int = Field(
        default=5000, description="Newest log entries the label queue chooses from."
    )
    queue_embedding: Literal["champion", "imagenet"] = Field(
        default="imagenet",
        description="Where `refit label next` and the Label page choose: the ImageNet "
        "embedding (finds unseen classes and more like a few examples far better; each logged "
        "image embedded once, kept in the log; each version registered with it keeps its "
        "training sample's embedding, a few seconds per registration) or the champion's own "
        "features (logged with each answer: nothing extra to compute).",
    )
    production_holdout_share: float = Field(
        default=0.2,
        ge=0,
        le=0.5,
        description="Share of the labels given on the Label page kept out of training: the "
        "production holdout, on which the gate's shadow check pairs both models.",
    )
    rollback_min_labels: int = Field(
        default=200,
        ge=1,
        description="Live accuracy: labelled production images (the production holdout) "
        "needed before the champion can be judged worse than the previous version.",
    )
    auto_rollback: bool = Field(
        default=False,
        description="Roll back to the previous version when the champion is worse on "
        "labelled production images (else only tell people); once per promotion.",
    )
    drift_permutations: int = Field(default=200, description="Permutations of the MMD test.")
    drift_cron: str = Field(
        default="0 * * * *", description="When the live drift check runs (cron; hourly)."
    )
    on_drift: Literal["event", "retrain"] = Field(
        default="event",
        description="When the live log drifts: emit the Prefect event `refit.drift.detected` "
        "(see it in the Prefect UI; hang notifications on it), or also start a retrain "
        "(an automation) that takes every pending batch.",
    )


DEFAULT_CONFIG_FILE = "refit.toml"


def config_file() -> Path:
    """The TOML file settings are read from (it need not exist)."""
    return Path(os.environ.get(CONFIG_ENV_VAR, DEFAULT_CONFIG_FILE))


def _secret(configured: SecretStr | None, file: Path) -> str | None:
    if configured is not None:
        return configured.get_secret_value()
    if file.is_file():
        return file.read_text().strip() or None
    return None


def _ensure_secret(existing: str | None, file: Path, new: str) -> tuple[str, bool]:
    """``existing``, or ``new`` written to ``file`` (mode 600, never overwritten)."""
    if existing:
        return existing, False
    file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(new + "\n")
    return new, True


def _in_workspace(name: str, doc: str) -> property:
    """A derived location inside the workspace (a property, so it follows ``workspace``)."""
    return property(lambda self: self.workspace / name, doc=doc)


class Settings(BaseSettings):
    """Everything Refit can be configured with. See the README's "Configuration" table."""

    model_config = SettingsConfigDict(
        env_prefix="REFIT_", env_nested_delimiter="__", extra="forbid"
    )

    # Where state lives.
    workspace: Path = Field(
        default=PROJECT_ROOT / ".refit",
        description="Directory for all local state: databases, artifacts, logs, pid files.",
    )

    # Network.
    host: str = Field(default="127.0.0.1", description="Address every local server binds to.")
    mlflow_port: int = Field(default=5000, description="MLflow tracking server + UI.")
    prefect_port: int = Field(default=4200, description="Prefect server + UI.")
    serving_port: int = Field(default=3000, description="BentoML prediction server + pages.")
    worker_port: int = Field(
        default=4201, description="Health endpoint of this host's Prefect worker."
    )
    verbose: bool = Field(
        default=False,
        description="Show the libraries' own log lines and warnings (`refit --verbose`).",
    )
    startup_timeout_s: float = Field(
        default=180.0, description="How long `refit up` waits for a server to answer."
    )

    # MLflow.
    mlflow_backend_uri: str | None = Field(
        default=None, description="Store of the MLflow server (default: sqlite in workspace)."
    )
    mlflow_artifact_root: str | None = Field(
        default=None,
        description="Where the local MLflow server keeps artifacts (default: the shared "
        "store's mlflow/ when it is remote, else in the workspace).",
    )
    mlflow_tracking_uri: str | None = Field(
        default=None, description="What clients log to (default: the local MLflow server)."
    )
    mlflow_registry_uri: str | None = Field(
        default=None, description="Model registry clients use (default: the tracking URI)."
    )
    mlflow_auth: SecretStr | None = Field(
        default=None,
        description="`user:password` of the local MLflow server's admin (default: generated "
        "by `refit up` into the workspace).",
    )
    mlflow_allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host names the local MLflow server answers besides localhost (a team "
        "server reached by name or address).",
    )
    registered_model_name: str = Field(
        default="refit-classifier", description="Name of the model in the MLflow registry."
    )

    # Prefect.
    prefect_home: Path | None = Field(
        default=None, description="PREFECT_HOME of the local server (default: in workspace)."
    )
    prefect_api_url: str | None = Field(
        default=None, description="Prefect API clients use (default: the local server)."
    )
    prefect_database_url: str | None = Field(
        default=None,
        description="Database of the local Prefect server, e.g. postgresql+asyncpg://... "
        "(default: sqlite in its home).",
    )
    prefect_auth: SecretStr | None = Field(
        default=None,
        description="`user:password` the Prefect API requires (default: generated by "
        "`refit up` into the workspace).",
    )

    # Data.
    sample_archive: Path = Field(
        default=PROJECT_ROOT / "samples" / "cifar10-sample.tar.gz",
        description="The embedded CIFAR-10 sample shipped with the repo.",
    )
    cifar10_archive: Path = Field(
        default=PROJECT_ROOT.parent / "shared" / "datasets" / "cifar10-train.tar.gz",
        description="The full CIFAR-10 training tarball the sample and built-in model come from.",
    )
    builtin_model: Path = Field(
        default=PROJECT_ROOT / "models" / "builtin" / "model.keras",
        description="The built-in model the bootstrap flow starts from by default.",
    )
    sample_seed: int = Field(default=20261123, description="Seed of the sample cut.")
    dvc_repo: Path = Field(
        default=PROJECT_ROOT, description="Repository whose DVC tracks the dataset."
    )
    dataset_dir: Path | None = Field(
        default=None, description="The dataset directory (default: data/ in dvc_repo)."
    )
    dvc_remote: str | None = Field(
        default=None,
        description="Default DVC remote, any DVC URL (default: the shared store's dvc/ when "
        "it is remote, else in the workspace).",
    )
    store_url: str | None = Field(
        default=None,
        description="The shared store (submission queue, dataset version log), an fsspec URL "
        "such as s3://bucket/prefix (default: the workspace).",
    )
    store_endpoint_url: str | None = Field(
        default=None,
        description="S3 endpoint of the store and the DVC remote (MinIO, moto); credentials "
        "come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.",
    )

    # Step policies ([ingest], [validation], [split] tables; REFIT_VALIDATION__... vars).
    ingest: IngestLimits = Field(default_factory=IngestLimits)
    validation: ValidationPolicy = Field(default_factory=ValidationPolicy)
    split: SplitPolicy = Field(default_factory=SplitPolicy)
    architecture: ArchitectureConfig = Field(default_factory=ArchitectureConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    gate: GatePolicy = Field(default_factory=GatePolicy)
    serving: ServingConfig = Field(default_factory=ServingConfig)
    orchestration: OrchestrationConfig = Field(default_factory=OrchestrationConfig)
    loop: LoopConfig = Field(default_factory=LoopConfig)
    notify: NotifyConfig = Field(default_factory=NotifyConfig)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = TomlConfigSettingsSource(settings_cls, toml_file=config_file())
        return (init_settings, env_settings, toml)

    @model_validator(mode="after")
    def _derive_defaults(self) -> Settings:
        self.workspace = self.workspace.expanduser().resolve()
        if self.mlflow_backend_uri is None:
            self.mlflow_backend_uri = f"sqlite:///{self.workspace / 'mlflow' / 'mlflow.db'}"
        if self.store_url is None:
            self.store_url = str(self.workspace)
        remote_store = "://" in self.store_url
        if self.mlflow_artifact_root is None:
            self.mlflow_artifact_root = (
                f"{self.store_url.rstrip('/')}/mlflow"
                if remote_store
                else str(self.workspace / "mlflow" / "artifacts")
            )
        if self.mlflow_tracking_uri is None:
            self.mlflow_tracking_uri = self.mlflow_url
        if self.mlflow_registry_uri is None:
            self.mlflow_registry_uri = self.mlflow_tracking_uri
        if self.prefect_home is None:
            self.prefect_home = self.workspace / "prefect"
        if self.prefect_api_url is None:
            self.prefect_api_url = f"{self.prefect_url}/api"
        if self.dataset_dir is None:
            self.dataset_dir = self.dvc_repo / "data"
        if self.dvc_remote is None:
            self.dvc_remote = (
                f"{self.store_url.rstrip('/')}/dvc"
                if remote_store
                else str(self.workspace / "dvc-remote")
            )
        return self

    # Derived locations. Properties, so they always agree with the fields above.
    @property
    def mlflow_url(self) -> str:
        return self._url(self.mlflow_port)

    @property
    def prefect_url(self) -> str:
        return self._url(self.prefect_port)

    @property
    def serving_url(self) -> str:
        return self._url(self.serving_port)

    def _url(self, port: int) -> str:
        return f"http://{self.host}:{port}"

    # Which servers `refit up` runs here: those the settings do not point elsewhere.
    @property
    def local_mlflow(self) -> bool:
        return self.mlflow_tracking_uri == self.mlflow_url

    @property
    def local_prefect(self) -> bool:
        return self.prefect_api_url == f"{self.prefect_url}/api"

    @property
    def local_serving(self) -> bool:
        return self.serving.public_url is None

    @property
    def public_serving_url(self) -> str:
        """Where clients and the smoke check reach serving (a load balancer, for a team)."""
        return (self.serving.public_url or self.serving_url).rstrip("/")

    def serving_replicas(self) -> list[str]:
        """Every serving replica a retrain reloads and checks."""
        return [u.rstrip("/") for u in self.serving.replicas] or [self.public_serving_url]

    def shared_store(self):
        """The shared store (:mod:`core.objectstore`)."""
        from core.objectstore import Store

        return Store(str(self.store_url), self.store_endpoint_url)

    def prediction_log_store(self):
        """Where the prediction log lives (``loop.log_url``, else the shared store's
        ``predictions/``)."""
        from core.objectstore import Store

        url = self.loop.log_url or self.shared_store().path("predictions")
        return Store(url, self.store_endpoint_url)

    run_dir = _in_workspace("run", "Pid files of the background servers.")
    log_dir = _in_workspace("logs", "Log files of the background servers.")
    staging_dir = _in_workspace("staging", "Batches being checked.")
    quarantine_dir = _in_workspace("quarantine", "Failed batches with their reports.")
    accepted_dir = _in_workspace("batches", "Reports and manifests of merged batches.")
    dvc_cache_dir = _in_workspace("dvc-cache", "The DVC cache.")
    weights_dir = _in_workspace("weights", "Pretrained backbone weights, converted once.")
    incoming_dir = _in_workspace(
        "incoming", "The drop folder: files dropped here are submitted once settled."
    )
    fetched_dir = _in_workspace(
        "fetched", "Submitted batches downloaded from a remote shared store."
    )
    token_file = _in_workspace(
        "admin-token", "The generated admin token (mode 600), when none is configured."
    )

    prefect_auth_file = _in_workspace(
        "prefect-auth", "The generated Prefect API credential (mode 600), when none is configured."
    )

    def admin_token(self) -> str | None:
        """The token privileged requests must carry, or None if none exists yet."""
        return _secret(self.serving.admin_token, self.serving.admin_token_file or self.token_file)

    def ensure_admin_token(self) -> tuple[str, bool]:
        """The admin token, generated on first use. Returns (token, newly created)."""
        return _ensure_secret(self.admin_token(), self.token_file, secrets.token_urlsafe(24))

    mlflow_auth_file = _in_workspace(
        "mlflow-auth", "The generated MLflow admin credential (mode 600), when none is configured."
    )

    def mlflow_auth_string(self) -> str | None:
        """The ``user:password`` of the local MLflow server, or None if none exists yet."""
        return _secret(self.mlflow_auth, self.mlflow_auth_file)

    def ensure_platform_secrets(self) -> None:
        """The admin token and the Prefect and MLflow credentials, made on first use."""
        self.ensure_admin_token()
        if self.local_prefect:
            self.ensure_prefect_auth()
        if self.local_mlflow and self.mlflow_auth_string() is None:
            _ensure_secret(None, self.mlflow_auth_file, f"refit:{secrets.token_urlsafe(24)}")

    def prefect_auth_string(self) -> str | None:
        """The ``user:password`` of the Prefect API, or None if none exists yet."""
        return _secret(self.prefect_auth, self.prefect_auth_file)

    def ensure_prefect_auth(self) -> tuple[str, bool]:
        """The Prefect API credential, generated on first use. Returns (it, newly created)."""
        made = f"refit:{secrets.token_urlsafe(24)}"
        return _ensure_secret(self.prefect_auth_string(), self.prefect_auth_file, made)

    def overlay(self, overrides: dict) -> Settings:
        """These settings with ``overrides`` (nested tables merged key by key) laid over."""

        def merge(base: dict, top: dict) -> dict:
            merged = dict(base)
            for key, value in top.items():
                nested = isinstance(value, dict) and isinstance(base.get(key), dict)
                merged[key] = merge(base[key], value) if nested else value
            return merged

        return Settings(**merge(self.model_dump(), overrides))

    def ensure_workspace(self) -> None:
        """Create the workspace directories (idempotent)."""
        for path in (self.workspace, self.run_dir, self.log_dir, self.prefect_home):
            assert path is not None
            path.mkdir(parents=True, exist_ok=True)
        if "://" not in str(self.mlflow_artifact_root):
            Path(str(self.mlflow_artifact_root)).mkdir(parents=True, exist_ok=True)
        self.workspace.chmod(0o700)  # databases, logs and secrets: the owner's alone
        if self.mlflow_backend_uri and self.mlflow_backend_uri.startswith("sqlite:///"):
            Path(self.mlflow_backend_uri.removeprefix("sqlite:///")).parent.mkdir(
                parents=True, exist_ok=True
            )


def tool_environment(settings: Settings) -> dict[str, str]:
    """Environment variables that configure the stack's libraries and servers.

    Telemetry of every tool is off, TensorFlow uses oneDNN (about 2x faster on these CPUs),
    MLflow and Prefect clients point at the configured servers, and servers and clients
    share the Prefect and MLflow credentials once `refit up` has made them.
    """
    return {
        "TF_ENABLE_ONEDNN_OPTS": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_TRACKING_URI": str(settings.mlflow_tracking_uri),
        "MLFLOW_REGISTRY_URI": str(settings.mlflow_registry_uri),
        "PREFECT_HOME": str(settings.prefect_home),
        "PREFECT_API_URL": str(settings.prefect_api_url),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DVC_NO_ANALYTICS": "1",
        "BENTOML_DO_NOT_TRACK": "true",
        "BENTOML_HOME": str(settings.workspace / "bentoml"),
        "GX_ANALYTICS_ENABLED": "false",
        # The Prefect API answers only with the credential, and only to its own UI's origin.
        "PREFECT_SERVER_CORS_ALLOWED_ORIGINS": settings.prefect_url,
        **prefect_credentials(settings),
        **mlflow_credentials(settings),
    }


def mlflow_credentials(settings: Settings) -> dict[str, str]:
    """What MLflow clients send to a server that requires its credential."""
    auth = settings.mlflow_auth_string()
    if auth is None:
        return {}
    user, _, password = auth.partition(":")
    return {"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password}


def prefect_credentials(settings: Settings) -> dict[str, str]:
    """The Prefect API credential for the server (required) and its clients (sent)."""
    auth = settings.prefect_auth_string()
    if auth is None:
        return {}
    return {"PREFECT_SERVER_API_AUTH_STRING": auth, "PREFECT_API_AUTH_STRING": auth}


def apply_tool_environment(settings: Settings) -> None:
    """Export :func:`tool_environment` into this process (before heavy libraries load)."""
    os.environ.update(tool_environment(settings))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, loaded once, with the tool environment exported (the one
    way every entry point loads them; nothing reads settings at import time)."""
    settings = Settings()
    apply_tool_environment(settings)
    return settings
