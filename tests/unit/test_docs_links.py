"""Every link in the README and `docs/` leads somewhere: markdown links to files of this repository, and
file names written as code (`docs/metrics.md`, `decisions/0002-api-choices.md`) that name a document."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")
# A path to a document written as code: `docs/x.md`, `decisions/y.md`, `grafana/z.json`.
CODE_PATH = re.compile(r"`([\w./-]+\.(?:md|json))`")


def documents() -> list[Path]:
    return [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").rglob("*.md"))]


def resolves(source: Path, target: str) -> bool:
    path = target.split("#", 1)[0]
    if not path:
        return True
    bases = [source.parent, ROOT, ROOT / "docs"]
    return any((base / path).exists() for base in bases)


def test_every_link_and_document_path_in_the_docs_exists() -> None:
    broken = []
    for doc in documents():
        text = doc.read_text()
        for target in MARKDOWN_LINK.findall(text):
            if target.startswith(("http://", "https://", "mailto:")):
                continue  # outside the repository: not fetched (tests never use the internet)
            if not resolves(doc, target):
                broken.append(f"{doc.relative_to(ROOT)}: ({target})")
        for target in CODE_PATH.findall(text):
            if "*" in target or "<" in target or target.startswith("/"):
                continue  # a pattern, or a URL path of the API
            if not resolves(doc, target):
                broken.append(f"{doc.relative_to(ROOT)}: `{target}`")
    assert broken == []


def test_the_link_check_sees_the_documents() -> None:
    names = {p.name for p in documents()}
    assert {"README.md", "operations.md", "client-api.md", "0002-api-choices.md"} <= names
