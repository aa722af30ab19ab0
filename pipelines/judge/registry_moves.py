"""The registry's alias moves: which version serves (``champion``, ``previous``), every move
as one transaction readers complete, the promotion history, and a version's tags. No model
code: serving's pages use it too (``pipelines.judge.approval``)."""

from __future__ import annotations

import getpass
import json
import time

from core import contract
from core.contract import CHAMPION, HISTORY_PREFIX, PREVIOUS
from core.faults import failpoint
from pipelines.judge.registry_client import ChampionMoved, RegistryClient, RegistryError, not_found

ANY = object()  # promote(expected=ANY): no compare-and-set (a manual promote or rollback)


class RegistryMoves(RegistryClient):
    """Aliases, tags and the promotion history of one registered model."""

    def alias_version(self, alias: str) -> str | None:
        """The version an alias points at, or None."""
        return self._call(
            f"read alias {alias}", lambda: contract.alias_version(self.client, self.name, alias)
        )

    def _tags(self) -> dict[str, str]:
        return self._call("read the tags", lambda: self.client.get_registered_model(self.name).tags)

    def history(self) -> list[dict]:
        """Every alias move, oldest first."""
        self.complete_pending()
        tags = self._tags()
        return [json.loads(v) for k, v in sorted(tags.items()) if k.startswith(HISTORY_PREFIX)]

    def version_tags(self, version: str) -> dict[str, str]:
        """A version's tags (RegistryError if there is no such version)."""
        from mlflow.exceptions import MlflowException

        try:
            found = self._call(
                "find the version", lambda: self.client.get_model_version(self.name, version)
            )
        except MlflowException as exc:
            raise RegistryError(f"{self.name} has no version {version}") from exc
        return dict(found.tags)

    def _version_exists(self, version: str) -> None:
        self.version_tags(version)

    def tagged(self, key: str, value: str) -> list[tuple[str, dict[str, str]]]:
        """(version, tags) of every version whose tag ``key`` is ``value``, newest first."""
        found = self._call(
            "list versions", lambda: self.client.search_model_versions(f"name='{self.name}'")
        )
        return [
            (str(mv.version), dict(mv.tags))
            for mv in sorted(found, key=lambda v: int(v.version), reverse=True)
            if mv.tags.get(key) == value
        ]

    def promote(
        self,
        version: str,
        reason: str,
        action: str = "promote",
        metrics: dict | None = None,
        expected: object = ANY,
        who: str | None = None,
    ) -> None:
        """Make ``version`` the champion; the old champion becomes ``previous``.

        One move as readers see it: the intent is written first, then ``champion`` moves
        (the only step readers act on), then ``previous`` and the history follow; a crash in
        between is completed by the next :meth:`complete_pending`. With ``expected``, a
        compare-and-set: refused with :class:`ChampionMoved` unless the champion is still
        ``expected`` (the version the challenger was judged against; None: no champion).
        """
        self.complete_pending()
        self._version_exists(version)
        current = self.alias_version(CHAMPION)
        if expected is not ANY and current != expected:
            raise ChampionMoved(
                f"the champion is {_label(current)}, not {_label(expected)} as when version "
                f"{version} was judged"
            )
        if current == version:
            raise RegistryError(f"version {version} is already the champion")
        entry = _entry(action, version, reason, current, metrics, who)
        intent = {"key": self._next_history_key(), "entry": entry}
        self._set_tag(contract.PENDING_MOVE_TAG, json.dumps(intent))
        failpoint("promote.intent")
        self._call(
            "move champion",
            lambda: self.client.set_registered_model_alias(self.name, CHAMPION, version),
        )
        self._finish_move(intent)

    def _next_history_key(self) -> str:
        history = [k for k in self._tags() if k.startswith(HISTORY_PREFIX)]
        return f"{HISTORY_PREFIX}{len(history) + 1:05d}"

    def note(self, action: str, version: str, reason: str, who: str | None = None) -> dict:
        """Append a decision that moves no alias (a rejection, an approval timing out) to
        the history; returns the entry."""
        self.complete_pending()
        entry = _entry(action, version, reason, self.alias_version(CHAMPION), who=who)
        self._set_tag(self._next_history_key(), json.dumps(entry))
        return entry

    def _set_tag(self, key: str, value: str) -> None:
        self._call(
            "write a tag", lambda: self.client.set_registered_model_tag(self.name, key, value)
        )

    def _finish_move(self, intent: dict) -> None:
        """The steps after ``champion`` moved; each may be repeated."""
        entry = intent["entry"]
        if entry["from_version"] is not None:
            self._call(
                "move previous",
                lambda: self.client.set_registered_model_alias(
                    self.name, PREVIOUS, entry["from_version"]
                ),
            )
        self._set_tag(intent["key"], json.dumps(entry))
        self._call(
            "clear the intent",
            lambda: self.client.delete_registered_model_tag(self.name, contract.PENDING_MOVE_TAG),
        )

    def tag_version(self, version: str, key: str, value: str) -> None:
        self._call(
            "tag the version",
            lambda: self.client.set_model_version_tag(self.name, version, key, value[:4900]),
        )

    def complete_pending(self) -> str | None:
        """Complete an alias move a crash cut short (``champion`` had moved), or drop its
        intent (it had not). Returns what was done, or None when nothing was pending."""
        from mlflow.exceptions import MlflowException

        try:
            pending = self._tags().get(contract.PENDING_MOVE_TAG)
        except MlflowException as exc:
            if not_found(exc):
                return None
            raise
        if not pending:
            return None
        intent = json.loads(pending)
        if self.alias_version(CHAMPION) == intent["entry"]["version"]:
            self._finish_move(intent)
            return f"completed the move of champion to version {intent['entry']['version']}"
        self._call(
            "drop the intent",
            lambda: self.client.delete_registered_model_tag(self.name, contract.PENDING_MOVE_TAG),
        )
        return f"dropped an unfinished move to version {intent['entry']['version']}"

    def rollback(self, reason: str, to: str | None = None, action: str = "rollback") -> str:
        """Move the champion back to ``previous`` (or to version ``to``); returns it."""
        self.complete_pending()
        target = to or self.alias_version(PREVIOUS)
        if target is None:
            raise RegistryError("there is no previous version to roll back to")
        self.promote(target, reason, action=action)
        return target


def _label(version: object) -> str:
    return "none" if version is None else f"v{version}"


def _entry(
    action: str,
    version: str,
    reason: str,
    current: str | None,
    metrics: dict | None = None,
    who: str | None = None,
) -> dict:
    """One history entry: who did what to which version, why and when."""
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "who": who or _who(),
        "action": action,
        "version": version,
        "reason": reason,
        "from_version": current,
        "metrics": metrics or {},
    }


def _who() -> str:
    try:
        return getpass.getuser()
    except OSError:
        return "refit"
