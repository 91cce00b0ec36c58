"""The Island's identity file, state.json: host_id, paired, account_id, paired_at (island-protocol §6)."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class IslandState:
    host_id: str
    paired: bool = False
    account_id: str | None = None
    paired_at: str | None = None

    @classmethod
    def load(cls, path: Path, host_id: str | None = None) -> IslandState:
        """Read the state file; an unreadable one is replaced by a fresh identity (as the Island does)."""
        try:
            data = json.loads(path.read_text())
            state = cls(
                host_id=str(data["host_id"]),
                paired=bool(data["paired"]),
                account_id=data.get("account_id"),
                paired_at=data.get("paired_at"),
            )
        except (OSError, ValueError, KeyError, TypeError):
            state = cls(host_id=host_id or str(uuid.uuid4()))
            state.save(path)
        if host_id and host_id != state.host_id:
            state = cls(host_id=host_id)
            state.save(path)
        return state

    def mark_paired(self, path: Path) -> None:
        self.paired = True
        self.account_id = None
        self.paired_at = str(int(time.time()))  # Unix seconds as a string, like the official Island
        self.save(path)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2))
