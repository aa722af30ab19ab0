"""Output for people: the libraries' start-up lines and notes stay off the terminal unless
asked for (``refit --verbose`` or ``REFIT_VERBOSE=1``). Errors still reach it.

TensorFlow's native code writes its start-up lines ("oneDNN custom operations are on",
"All log messages before absl::InitializeLog() ...") straight to file descriptor 2, so
they are caught there while it loads; every other line written meanwhile is passed on.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

NOISE = (
    "All log messages before absl::InitializeLog()",
    "oneDNN custom operations are on",
    "This TensorFlow binary is optimized",
    "cpu_feature_guard.cc",
    "Unable to register cu",  # CUDA factories on a machine without CUDA
)
QUIET_LOGGERS = ("mlflow", "absl", "tensorflow", "h5py", "great_expectations", "alembic")


@contextmanager
def native_stderr_filtered() -> Iterator[None]:
    """Catch what native code writes to fd 2; write back every line that is not noise."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            for line in caught.read().decode(errors="replace").splitlines(keepends=True):
                if not any(noise in line for noise in NOISE):
                    sys.stderr.write(line)


def quiet_libraries() -> None:
    """Library loggers at ERROR, and Keras' warnings about imported models' input structure
    off; for the commands that train or load models, TensorFlow loaded without its lines."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    # MLflow sets its own logger's level when it is imported, and draws progress bars
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    warnings.filterwarnings("ignore", message=r"The structure of `inputs` doesn't match")
    warnings.filterwarnings("ignore", module=r"mlflow\..*")


def load_tensorflow_quietly() -> None:
    with native_stderr_filtered():
        import tensorflow  # noqa: F401
