"""The jobs context has no import circle (the lifecycle engine, its hooks and the service import one way:
service → lifecycle → effects → wiring)."""

from __future__ import annotations

import grimp


def test_no_module_of_the_jobs_context_imports_itself_back() -> None:
    graph = grimp.build_graph("coordinator")
    jobs = [m for m in graph.modules if m.startswith("coordinator.jobs")]
    circles = [
        (a, b)
        for a in jobs
        for b in graph.find_modules_directly_imported_by(a)
        if b.startswith("coordinator.jobs") and graph.chain_exists(importer=b, imported=a)
    ]
    assert circles == []
    assert not graph.chain_exists(importer="coordinator.jobs.effects", imported="coordinator.jobs.service")
