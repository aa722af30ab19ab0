"""What `refit up` serves: the schedule carries the cron and time zone from settings, and
each retrain deployment runs one at a time."""

from __future__ import annotations

import pytest


def test_the_schedule_uses_the_configured_cron_and_time_zone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from core.settings import get_settings
    from flows.deployments import deployments

    monkeypatch.setenv("REFIT_ORCHESTRATION__SCHEDULE_CRON", "30 4 * * 2")
    monkeypatch.setenv("REFIT_ORCHESTRATION__SCHEDULE_TIMEZONE", "Europe/Berlin")
    get_settings.cache_clear()
    found = {d.name: d for d in deployments()}
    (schedule,) = found["scheduled-retrain"].schedules
    assert schedule.schedule.cron == "30 4 * * 2"
    assert schedule.schedule.timezone == "Europe/Berlin"
    assert not found["retrain"].schedules and found["retrain"].triggers
    for name in ("retrain", "scheduled-retrain"):
        assert found[name].concurrency_limit == 1
