"""What `refit deploy` registers: the schedule carries the cron and time zone from settings, and
each retrain deployment runs one at a time. (In a subprocess: importing Prefect here would
fix its settings for the whole test session.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys

PROBE = """
import json
from core.settings import get_settings
from flows.deployments import specs
found = {name: options for _, name, options in specs(get_settings())}
schedule = found["retrain"]["schedule"]
print(json.dumps({
    "cron": schedule.cron,
    "timezone": schedule.timezone,
    "retrain_triggers": len(found["retrain"]["triggers"]),
    "limits": [found[n].get("concurrency_limit") for n in ("retrain", "bootstrap")],
    "drift_cron": found["drift"]["schedule"].cron,
}))
"""


def test_the_schedule_uses_the_configured_cron_and_time_zone() -> None:
    env = {
        **os.environ,
        "REFIT_ORCHESTRATION__SCHEDULE_CRON": "30 4 * * 2",
        "REFIT_ORCHESTRATION__SCHEDULE_TIMEZONE": "Europe/Berlin",
        "REFIT_LOOP__DRIFT_CRON": "15 */2 * * *",
    }
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["cron"] == "30 4 * * 2" and found["timezone"] == "Europe/Berlin"
    assert found["retrain_triggers"] == 1
    assert found["limits"] == [1, None]  # one retrain at a time, on every worker
    assert found["drift_cron"] == "15 */2 * * *"  # the live drift check's schedule
