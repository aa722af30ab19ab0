"""Settings precedence: keyword > environment > refit.toml > default; derived values follow."""

from pathlib import Path

import pytest

from core.settings import Settings, tool_environment


@pytest.fixture
def toml_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "refit.toml"
    path.write_text(
        'mlflow_port = 5111\nprefect_port = 4222\nregistered_model_name = "from-file"\n'
    )
    monkeypatch.setenv("REFIT_CONFIG", str(path))
    return path


def test_defaults() -> None:
    settings = Settings()
    assert (settings.host, settings.mlflow_port, settings.prefect_port, settings.serving_port) == (
        "127.0.0.1",
        5000,
        4200,
        3000,
    )
    assert settings.workspace.name == ".refit"
    assert settings.mlflow_tracking_uri == "http://127.0.0.1:5000"
    assert settings.mlflow_backend_uri == f"sqlite:///{settings.workspace}/mlflow/mlflow.db"
    assert settings.prefect_api_url == "http://127.0.0.1:4200/api"
    assert settings.prefect_home == settings.workspace / "prefect"


@pytest.mark.usefixtures("toml_file")
def test_file_overrides_default() -> None:
    settings = Settings()
    assert settings.mlflow_port == 5111
    assert settings.registered_model_name == "from-file"
    assert settings.mlflow_tracking_uri == "http://127.0.0.1:5111"


@pytest.mark.usefixtures("toml_file")
def test_env_overrides_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REFIT_MLFLOW_PORT", "5999")
    settings = Settings()
    assert settings.mlflow_port == 5999
    assert settings.prefect_port == 4222  # not in the environment: the file still wins
    assert settings.prefect_url == "http://127.0.0.1:4222"


@pytest.mark.usefixtures("toml_file")
def test_keyword_overrides_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REFIT_MLFLOW_PORT", "5999")
    assert Settings(mlflow_port=6001).mlflow_port == 6001


def test_workspace_moves_every_derived_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REFIT_WORKSPACE", str(tmp_path / "ws"))
    settings = Settings()
    for path in (settings.prefect_home, settings.mlflow_artifact_root, settings.run_dir,
                 settings.store_url, settings.dvc_remote):  # fmt: skip
        assert Path(str(path)).is_relative_to(tmp_path / "ws")
    assert str(tmp_path / "ws") in str(settings.mlflow_backend_uri)


def test_a_remote_store_holds_the_dvc_remote_and_the_artifacts(monkeypatch) -> None:
    monkeypatch.setenv("REFIT_STORE_URL", "s3://team-bucket/refit")
    settings = Settings()
    assert settings.dvc_remote == "s3://team-bucket/refit/dvc"
    assert settings.mlflow_artifact_root == "s3://team-bucket/refit/mlflow"
    assert settings.shared_store().remote and settings.local_mlflow


def test_settings_that_point_elsewhere_start_nothing_local(monkeypatch) -> None:
    monkeypatch.setenv("REFIT_MLFLOW_TRACKING_URI", "http://mlflow.team:5000")
    monkeypatch.setenv("REFIT_PREFECT_API_URL", "http://prefect.team:4200/api")
    monkeypatch.setenv("REFIT_SERVING__PUBLIC_URL", "http://lb.team:8080/")
    monkeypatch.setenv("REFIT_ORCHESTRATION__WATCH_DROP_FOLDER", "false")
    from refit import services

    settings = Settings()
    assert [s.name for s in services.services(settings)] == ["worker"]
    assert settings.serving_replicas() == ["http://lb.team:8080"]
    assert [s.name for s in services.services(settings, "worker")] == ["worker"]
    assert services.services(settings)[0].prepare  # `refit up` deploys before its worker
    assert not services.services(settings, "worker")[0].prepare


def test_explicit_tracking_uri_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REFIT_MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    settings = Settings()
    assert settings.mlflow_tracking_uri == "sqlite:///elsewhere.db"
    assert settings.mlflow_registry_uri == "sqlite:///elsewhere.db"


def test_unknown_key_in_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "refit.toml"
    path.write_text("mlflow_prot = 1\n")
    monkeypatch.setenv("REFIT_CONFIG", str(path))
    with pytest.raises(ValueError, match="mlflow_prot"):
        Settings()


def test_telemetry_is_off_and_onednn_on() -> None:
    env = tool_environment(Settings())
    assert env["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert env["DVC_NO_ANALYTICS"] == "1"
    assert env["BENTOML_DO_NOT_TRACK"] == "true"
    assert env["TF_ENABLE_ONEDNN_OPTS"] == "1"


def test_admin_token_is_generated_once_private_and_a_setting_wins(tmp_path) -> None:
    from core.settings import Settings

    settings = Settings(workspace=tmp_path / "ws")
    assert settings.admin_token() is None
    token, created = settings.ensure_admin_token()
    assert created and len(token) >= 24
    assert (settings.token_file.stat().st_mode & 0o777) == 0o600
    assert settings.ensure_admin_token() == (token, False)
    configured = Settings(workspace=tmp_path / "ws", serving={"admin_token": "mine"})
    assert configured.admin_token() == "mine"


def test_a_misspelt_setting_is_refused_by_name(tmp_path: Path) -> None:
    """A typo in a section (variable or refit.toml) is an error naming it, not ignored."""
    import os
    import subprocess
    import sys

    (tmp_path / "refit.toml").write_text("[gate]\nmin_acuracy = 0.9\n")
    env = {**os.environ, "REFIT_SERVING__THREAD": "1", "REFIT_WORKSPACE": str(tmp_path / "ws")}
    env.pop("REFIT_CONFIG", None)
    cli = [sys.executable, "-c", "from refit.cli import app; app()", "status"]
    done = subprocess.run(cli, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "serving.thread (REFIT_SERVING__THREAD): not a setting" in done.stderr, done.stderr
    assert "gate.min_acuracy (REFIT_GATE__MIN_ACURACY): not a setting" in done.stderr
    assert "refit.toml" in done.stderr and "Traceback" not in done.stderr
