"""OTA transfer, the controller's pure part (docs/OTA.md, docs/PROTOCOL.md "9 OTA"): what a
REQUEST may be served, the per-release rate limit, and the per-device mirror of the STATUS a
device reports. Sans-I/O: the clock is passed in; never imports transport, store or api."""

from __future__ import annotations

from dataclasses import dataclass, field

from protocol import messages as M
from protocol import ota


@dataclass(frozen=True)
class ReleaseInfo:
    """What serving a release needs to know of it (read once from its file by the shell)."""

    rid: bytes
    path: str
    manifest_size: int
    manifest_sha256: bytes
    version: int
    display: str
    chunk: int  # payload chunk size = manifest piece size
    total: int  # payload bytes

    def __post_init__(self) -> None:
        if len(self.rid) != ota.RELEASE_ID_LEN or self.manifest_size <= 0 or self.total <= 0:
            raise ValueError("a release has an 8-byte id, a manifest and a payload")

    def count(self, part: int) -> int:
        n = self.manifest_size if part == M.PART_MANIFEST else self.total
        return (n + self.chunk - 1) // self.chunk

    def span(self, part: int, index: int) -> tuple[int, int]:
        """(file offset, length) of piece/chunk `index` of `part`: the payload starts right after
        the manifest in a release file."""
        size = self.manifest_size if part == M.PART_MANIFEST else self.total
        base = 0 if part == M.PART_MANIFEST else self.manifest_size
        off = index * self.chunk
        return base + off, min(self.chunk, size - off)


def plan(rel: ReleaseInfo, part: int, index: int, count: int) -> list[tuple[int, int, int]]:
    """The (index, file offset, length) to serve for a REQUEST, clipped to the release: an
    index past the end is simply not served (the device's own bounds are the signed ones)."""
    out = []
    for i in range(index, min(index + count, rel.count(part))):
        off, n = rel.span(part, i)
        out.append((i, off, n))
    return out


@dataclass
class DeviceTransfer:
    """The controller's mirror of one device's transfer, from its STATUS messages and the
    chunks served to it (served twice = fetched again: resume and corruption figures)."""

    release: str  # the release id, hex
    state: str = ota.STATES[ota.OS_OFFERED]
    result: str = ota.RESULTS[ota.OR_NONE]
    done: int = 0
    total: int = 0
    detail: str | None = None
    updated: float = 0.0
    served: dict[tuple[int, int], int] = field(default_factory=dict)

    def status(
        self, state: int, result: int, done: int, total: int, detail: str | None, now: float
    ) -> None:
        self.state = ota.STATES.get(state, str(state))
        self.result = ota.RESULTS.get(result, str(result))
        self.done, self.total, self.detail, self.updated = done, total, detail, now

    def serve(self, part: int, index: int) -> None:
        k = (part, index)
        self.served[k] = self.served.get(k, 0) + 1

    def refetched(self, part: int = M.PART_PAYLOAD) -> int:
        """Chunks of `part` served more than once (each extra time counted)."""
        return sum(n - 1 for (p, _), n in self.served.items() if p == part and n > 1)

    def view(self) -> dict[str, object]:
        return {
            "release": self.release,
            "state": self.state,
            "result": self.result,
            "done": self.done,
            "total": self.total,
            "detail": self.detail,
            "updated": self.updated,
            "chunks_served": sum(n for (p, _), n in self.served.items() if p == M.PART_PAYLOAD),
            "chunks_refetched": self.refetched(),
        }
