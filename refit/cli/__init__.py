"""The `refit` command line: one command per user action, each a few lines calling one use
case. The root app only registers the command groups, one module each.

Heavy libraries (TensorFlow, MLflow, Prefect, GX, DVC) are imported inside the commands
that need them, so `refit --help` answers at once.
"""

from __future__ import annotations

import inspect
import os
import re
from typing import Annotated

import typer

from refit.cli import data, loop, models, servers, train

app = typer.Typer(
    help="Refit keeps image classifiers up to date: validate batches, fine-tune, gate, serve.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(servers.app)
app.add_typer(data.sample_app, name="sample")
app.add_typer(data.data_app, name="data")
app.add_typer(train.app, name="train")
app.add_typer(models.app, name="model")
app.add_typer(loop.app)
app.add_typer(loop.label_app, name="label")


def _as_paragraphs(*groups: typer.Typer) -> None:
    """Each command's help from its docstring with the source's line breaks joined, so help
    reads as paragraphs at any width (blank lines still separate paragraphs)."""
    for group in groups:
        for command in group.registered_commands:
            doc = inspect.getdoc(command.callback) or ""
            command.help = command.help or re.sub(r"(?<!\n)\n(?!\n)", " ", doc)


_as_paragraphs(servers.app, data.sample_app, data.data_app, train.app, models.app, loop.app)
_as_paragraphs(loop.label_app)


@app.callback()
def main(
    verbose: Annotated[
        bool, typer.Option("--verbose", help="Show the libraries' own log lines and warnings.")
    ] = False,
) -> None:
    if verbose:
        os.environ["REFIT_VERBOSE"] = "1"
