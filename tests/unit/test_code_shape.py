"""The shape of the code base: no source file over 500 lines (migrations aside), no import circle."""

from __future__ import annotations

from pathlib import Path

import grimp

SRC = Path(__file__).resolve().parents[2] / "src"
MAX_LINES = 500
# A migration is a frozen record of a schema change, written once and never edited: it may be long.
EXEMPT = ("coordinator/repo/migrations/versions/",)


def test_no_source_file_is_over_500_lines() -> None:
    files = [p for p in SRC.rglob("*.py") if not p.relative_to(SRC).as_posix().startswith(EXEMPT)]
    assert len(files) > 100  # the walk found the sources
    long = {
        p.relative_to(SRC).as_posix(): n for p in files if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}, f"split these along a real seam: {long}"


def test_no_import_circle_between_coordinator_modules() -> None:
    # Imports for the type checker only (`if TYPE_CHECKING:`) do not run: `Runtime` names the types of the
    # components it holds that way. Every other import counts, inside functions too.
    graph = grimp.build_graph("coordinator", exclude_type_checking_imports=True, cache_dir=None)
    assert len(graph.modules) > 100
    circles = sorted(
        (importer, " -> ".join(back))
        for importer in graph.modules
        for imported in graph.find_modules_directly_imported_by(importer)
        if (back := graph.find_shortest_chain(importer=imported, imported=importer))
    )
    assert circles == [], "import circles (module, then the chain back to it): " + repr(circles)


def test_the_circle_check_sees_function_level_imports() -> None:
    # The check would pass vacuously if the graph missed imports made inside functions (the usual way to
    # hide a circle): coordinator.cli imports the application tree only inside its commands.
    graph = grimp.build_graph("coordinator", exclude_type_checking_imports=True, cache_dir=None)
    assert graph.direct_import_exists(importer="coordinator.cli", imported="coordinator.app")
