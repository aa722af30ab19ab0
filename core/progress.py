"""How long work reports as it goes: a callable that takes one line for people."""

from collections.abc import Callable

Progress = Callable[[str], None]
