"""The monitoring experiment: each drift check logged as a run of ``<model>-monitoring``,
whose metrics over time are that experiment's charts. A mixin of the registry (it uses the
registry's client and retries), kept beside the monitor that writes it."""

from __future__ import annotations

import tempfile
from pathlib import Path


class MonitoringLog:
    """The registry's monitoring experiment (mixed into ``pipelines.judge.registry``)."""

    @property
    def monitoring_experiment(self) -> str:
        return f"{self.name}-monitoring"

    def log_check(
        self,
        run_name: str,
        metrics: dict[str, float],
        tags: dict[str, str],
        files: dict[str, bytes],
    ) -> str:
        """Log one monitoring check (a drift check) as a run of the monitoring experiment:
        its metrics over time are that experiment's charts. Returns the run id."""
        import mlflow

        mlflow.set_tracking_uri(self.config.tracking_uri)
        experiment = self.experiment_id(self.monitoring_experiment)

        def log() -> str:
            with mlflow.start_run(experiment_id=experiment, run_name=run_name) as active:
                mlflow.set_tags(tags)
                mlflow.log_metrics(metrics)
                with tempfile.TemporaryDirectory() as tmp:
                    for name, data in files.items():
                        (Path(tmp) / name).write_bytes(data)
                    mlflow.log_artifacts(tmp)
                return active.info.run_id

        return self._call("log the check", log)

    def check_history(self, metric: str, limit: int = 500) -> list[tuple[float, float]]:
        """(start time in s, value) of ``metric`` over the monitoring runs, oldest first."""

        def read() -> list[tuple[float, float]]:
            found = self.client.get_experiment_by_name(self.monitoring_experiment)
            if found is None:
                return []
            runs = self.client.search_runs(
                [found.experiment_id], max_results=limit, order_by=["attributes.start_time DESC"]
            )
            return sorted(
                (r.info.start_time / 1000, r.data.metrics[metric])
                for r in runs
                if metric in r.data.metrics
            )

        return self._call("read the checks", read)
