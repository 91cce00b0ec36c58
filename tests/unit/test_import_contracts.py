"""The import-linter contracts of pyproject.toml (`make contracts`) also run in the suite, in process."""

from __future__ import annotations

from pathlib import Path

import pytest
from importlinter import cli

ROOT = Path(__file__).resolve().parents[2]


def lint(config: Path) -> int:
    return cli.lint_imports(config_filename=str(config), no_cache=True, no_logo=True)


def test_the_import_contracts_hold(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(ROOT)
    code = lint(ROOT / "pyproject.toml")
    out = capsys.readouterr().out
    assert code == 0, out
    assert "Contexts never import transports KEPT" in out, out


def test_a_broken_contract_fails_the_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The same kind of contract over a package where a context imports a transport.
    package = tmp_path / "tierpkg"
    (package / "jobs").mkdir(parents=True)
    (package / "web").mkdir()
    for init in ("__init__.py", "jobs/__init__.py", "web/__init__.py"):
        (package / init).write_text("")
    (package / "jobs" / "service.py").write_text("from tierpkg.web import routes\n")
    (package / "web" / "routes.py").write_text("")
    config = tmp_path / "contracts.toml"
    config.write_text(
        '[tool.importlinter]\nroot_packages = ["tierpkg"]\n\n'
        '[[tool.importlinter.contracts]]\nname = "Contexts never import transports"\ntype = "forbidden"\n'
        'source_modules = ["tierpkg.jobs"]\nforbidden_modules = ["tierpkg.web"]\n'
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert lint(config) == 1
    out = capsys.readouterr().out
    assert "BROKEN" in out and "tierpkg.jobs.service -> tierpkg.web.routes" in out, out
