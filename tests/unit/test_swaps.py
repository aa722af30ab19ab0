"""Swaps in the serving champion holder, with a registry stand-in whose loads can be held:
a swap requested while one loads waits for it, and the later alias wins; a load that fails
(a version too large for the replica's memory, say) leaves the old one serving."""

from __future__ import annotations

import threading

from serving.champion import ChampionHolder


class Source:
    """The registry as the holder sees it: an alias, and loads that may be held open."""

    name = "refit-classifier"

    def __init__(self) -> None:
        self.alias = "1"
        self.loading: dict[str, threading.Event] = {}
        self.started = threading.Event()
        self.fail: set[str] = set()

    def champion_version(self) -> str:
        return self.alias

    def load(self, version, engine, tolerance, threads=0, registered_only=False, deferred=False):
        self.started.set()
        if version in self.loading:
            self.loading[version].wait(30)
        if version in self.fail:
            raise MemoryError(f"version {version} does not fit beside the one serving")
        return type("Loaded", (), {"version": version, "engine_note": "stand-in"})()


def test_a_swap_requested_while_one_loads_waits_and_the_later_alias_wins() -> None:
    source = Source()
    holder = ChampionHolder(source)
    holder.refresh()
    source.alias, source.loading["2"] = "2", threading.Event()
    first = threading.Thread(target=holder.refresh)
    first.start()
    assert source.started.wait(30)  # version 2 is loading
    source.alias = "3"  # the alias moves again meanwhile
    second = threading.Thread(target=holder.refresh)
    second.start()
    assert holder.current.version == "1"  # nothing half-done is served
    source.loading["2"].set()
    first.join(30)
    second.join(30)
    assert holder.current.version == "3"


def test_a_version_that_cannot_be_loaded_leaves_the_old_one_serving() -> None:
    source = Source()
    holder = ChampionHolder(source)
    holder.refresh()
    source.alias, source.fail = "2", {"2"}
    result = holder.refresh()
    assert holder.current.version == "1" and not result["changed"]
    assert "version 2 failed to load, still serving 1" in holder.error
    assert "does not fit" in holder.error
