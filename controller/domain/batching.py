"""Batch-by-size-or-time, whichever comes first, as pure logic: the shell asks `full` after each
add and `due(now)` on a timer, then takes the items and commits them in one transaction."""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class Batcher(Generic[T]):
    def __init__(self, max_weight: int, max_age: float) -> None:
        self.max_weight = max_weight
        self.max_age = max_age
        self.items: list[T] = []
        self.weight = 0
        self.first: float | None = None  # when the oldest item waiting arrived

    def add(self, item: T, now: float, weight: int = 1) -> bool:
        """Queue item; True when the batch is full and should be flushed now."""
        if self.first is None:
            self.first = now
        self.items.append(item)
        self.weight += weight
        return self.weight >= self.max_weight

    @property
    def full(self) -> bool:
        return self.weight >= self.max_weight

    def due(self, now: float) -> bool:
        return self.first is not None and (self.full or now - self.first >= self.max_age)

    def take(self) -> list[T]:
        items, self.items, self.weight, self.first = self.items, [], 0, None
        return items

    def __len__(self) -> int:
        return len(self.items)
