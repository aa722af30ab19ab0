"""Output for people: the libraries' start-up lines and notes stay off the terminal unless
asked for (``refit --verbose`` or ``REFIT_VERBOSE=1``). Errors still reach it.

TensorFlow's native code writes its start-up lines ("oneDNN custom operations are on",
"All log messages before absl::InitializeLog() ...") straight to file descriptor 2, so
every line written there passes a filter for the rest of the process; every line that is
not one of those is passed on.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import sys
import threading
import warnings

NOISE = (
    "All log messages before absl::InitializeLog()",
    "oneDNN custom operations are on",
    "This TensorFlow binary is optimized",
    "cpu_feature_guard.cc",
    "Unable to register cu",  # CUDA factories on a machine without CUDA
)
# absl's C++ info and warning lines: "I0000 00:00:1796530993.081629    3534 file.cc:227] ..."
NATIVE_LOG = re.compile(r"[IW]\d{4} \d\d:\d\d:[\d.]+ +\d+ \S+:\d+\]")
QUIET_LOGGERS = ("mlflow", "absl", "tensorflow", "h5py", "great_expectations", "alembic")


def _noise(line: str) -> bool:
    return any(noise in line for noise in NOISE) or bool(NATIVE_LOG.match(line))


def filter_native_stderr() -> None:
    """For the rest of this process (and the children that inherit its fd 2), pass what
    native code writes to file descriptor 2 through a filter that drops the libraries'
    start-up lines. Python's own ``sys.stderr`` keeps writing to the terminal directly."""
    global _filtering
    if _filtering or not _stderr_is_fd2():
        return  # already on, or an in-process caller (a test runner) captures stderr
    _filtering = True
    sys.stderr.flush()
    terminal = os.dup(2)
    sys.stderr = os.fdopen(os.dup(terminal), "w", buffering=1, errors="replace")
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        with os.fdopen(read_end, "rb") as pipe, os.fdopen(terminal, "wb", buffering=0) as out:
            for line in pipe:
                if not _noise(line.decode(errors="replace")):
                    out.write(line)

    thread = threading.Thread(target=pump, name="native-stderr-filter", daemon=True)
    thread.start()

    def drain() -> None:  # fd 2 back to the terminal; the pump ends once the pipe is empty
        sys.stderr.flush()
        os.dup2(sys.stderr.fileno(), 2)
        thread.join(timeout=2)

    atexit.register(drain)


_filtering = False


def _stderr_is_fd2() -> bool:
    try:
        return sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):
        return False


def quiet_libraries() -> None:
    """Library loggers at ERROR, Keras' warnings about imported models' input structure and
    optimizer state off, and TensorFlow's native start-up lines filtered."""
    filter_native_stderr()
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    # MLflow sets its own logger's level when it is imported, and draws progress bars
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    warnings.filterwarnings("ignore", message=r"The structure of `inputs` doesn't match")
    warnings.filterwarnings("ignore", module=r"mlflow\..*")
    # a model saved with its optimizer, loaded for inference or a fresh compile
    warnings.filterwarnings("ignore", message=r"Skipping variable loading for optimizer")
