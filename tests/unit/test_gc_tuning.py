"""Long-lived processes run with the tuned garbage collector (docs/decisions/gc-tuning.md)."""

from __future__ import annotations

import gc

from coordinator import cli


def test_run_loop_freezes_what_exists_and_raises_the_youngest_threshold() -> None:
    before = gc.get_threshold()
    seen: dict[str, object] = {}

    async def main() -> None:
        seen["threshold"] = gc.get_threshold()
        seen["frozen"] = gc.get_freeze_count()

    try:
        gc.unfreeze()
        cli.run_loop(main())
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
    assert seen["threshold"] == cli.GC_THRESHOLDS
    assert isinstance(seen["frozen"], int) and seen["frozen"] > 1000  # the interpreter's objects at least
