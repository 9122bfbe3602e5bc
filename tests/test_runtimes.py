"""A missing program fails a test, unless scripts/test (not root) said it may be skipped."""

from __future__ import annotations

import pytest

from tests.runtimes import ALLOW_MISSING, missing


def test_missing_program_fails_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ALLOW_MISSING, raising=False)
    with pytest.raises(pytest.fail.Exception, match="apt-get install -y redis-server"):
        missing("redis-server is not installed", "apt-get install -y redis-server")


def test_missing_program_skips_when_it_cannot_be_installed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ALLOW_MISSING, "1")
    with pytest.raises(pytest.skip.Exception, match=r"Rscript.*apt-get install -y r-base-core"):
        missing("examples/tutorial.R needs `Rscript`", "apt-get install -y r-base-core")


def test_scripts_test_says_what_to_install_without_root() -> None:
    from pathlib import Path

    script = (Path(__file__).resolve().parent.parent / "scripts" / "test").read_text()
    # the non-root branch names the packages, the command, and sets the skip switch
    branch = script.split('[ "$(id -u)" -ne 0 ]', 1)[1].split("\nfi\n", 1)[0]
    assert "sudo apt-get install -y --no-install-recommends ${need[*]}" in branch
    assert f"export {ALLOW_MISSING}=1" in branch
