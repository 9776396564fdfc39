"""A registry: named things declared once (tasks, method kinds, serving modes), looked up with a
one-line error that lists what exists and says where to add more."""
from __future__ import annotations

from . import LoraDriftError


class Registry(dict):
    def __init__(self, what: str, where: str):
        super().__init__()
        self.what, self.where = what, where

    def register(self, item):
        """Add (or replace) ``item`` under its ``name``; returns it, so it can decorate or chain."""
        self[item.name] = item
        return item

    def lookup(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise LoraDriftError(f"unknown {self.what} {name!r}: choose one of {list(self)} "
                                 f"(or register one in {self.where})") from None
