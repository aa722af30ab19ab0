"""mkdocs hooks: the reference pages are generated from the code at every build, never
edited by hand. A page holds a marker (``<!-- refit:settings -->``, ``rules``, ``http``)
that the table made from the code replaces."""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("mkdocs.plugins.refit")
MARKER = re.compile(r"<!-- refit:(\w+) -->")


def on_startup(**kwargs) -> None:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    # mkdocs-typer2 runs the `typer` command: the one beside this interpreter
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


def on_page_markdown(markdown: str, page, **kwargs) -> str:
    return MARKER.sub(lambda m: GENERATORS[m.group(1)](), markdown)


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def settings_table() -> str:
    """Every setting: its key, its REFIT_* variable, its default and its description."""
    from pydantic import BaseModel

    from core.settings import PROJECT_ROOT, Settings

    rows = []

    def walk(model: type[BaseModel], prefix: tuple[str, ...]) -> None:
        for name, field in model.model_fields.items():
            kind = field.annotation
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                walk(kind, (*prefix, name))
                continue
            if not field.description:
                log.warning("setting %s has no description", ".".join((*prefix, name)))
            default = field.get_default(call_default_factory=True)
            shown = "none" if default is None else str(default).replace(str(PROJECT_ROOT), ".")
            key = ".".join((*prefix, name))
            variable = "REFIT_" + "__".join((*prefix, name)).upper()
            rows.append(
                f"| `{key}` | `{variable}` | `{_cell(shown)}` | {_cell(field.description)} |"
            )

    walk(Settings, ())
    head = "| setting | variable | default | meaning |\n| --- | --- | --- | --- |\n"
    return head + "\n".join(rows)


def rules_table() -> str:
    """The validation rules from the catalogue, with the default policy filled in."""
    from core.policies import ValidationPolicy
    from pipelines.data.rules import CATALOGUE

    policy = ValidationPolicy()
    head = "| rule | severity | stage | checked by | what it checks |\n" + "| --- " * 5 + "|\n"
    rows = (
        f"| `{r.name}` | {r.severity} | {r.stage} | {r.checked_by} | {_cell(r.describe(policy))} |"
        for r in CATALOGUE.values()
    )
    return head + "\n".join(rows)


def http_table() -> str:
    """The serving API from its OpenAPI spec (what `/openapi.json` serves)."""
    from serving.service import Refit

    spec = Refit.openapi_spec.asdict()
    rows = []
    for path, item in sorted(spec["paths"].items()):
        for method, operation in item.items():
            text = operation.get("description") or operation.get("summary") or ""
            rows.append(f"| `{method.upper()} {path}` | {_cell(text.strip().split(chr(10))[0])} |")
    return "| endpoint | what |\n| --- | --- |\n" + "\n".join(rows)


GENERATORS = {"settings": settings_table, "rules": rules_table, "http": http_table}
