"""Build and check the R client package (clients/r) against a real server.

The service is started once for the module on a free loopback port; `R CMD build`
and `R CMD check --no-manual` run once, in a temporary directory, with
GRADTAPE_URL naming the server, so the package's testthat tests (and its
examples) run against it. A missing R or R package is a failure that names the
packages to install, not a skip.
"""

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.live import live_server
from tests.runtimes import missing

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "clients" / "r"
BUILD_TIMEOUT_S = 300
CHECK_TIMEOUT_S = 900

R_INSTALL = (
    "apt-get install -y --no-install-recommends r-base-core r-cran-httr2 r-cran-jsonlite "
    "r-cran-r6 r-cran-testthat r-cran-withr"
)
R_PACKAGES = ["httr2", "jsonlite", "R6", "testthat", "withr"]

# testthat's closing summary, e.g. "[ FAIL 0 | WARN 0 | SKIP 0 | PASS 461 ]"
SUMMARY = re.compile(
    r"\[ FAIL (?P<fail>\d+) \| WARN (?P<warn>\d+) \| SKIP (?P<skip>\d+) \| PASS (?P<pass>\d+) \]"
)
STATUS = re.compile(r"^Status: (?P<status>.+)$", re.MULTILINE)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with live_server(tmp_path_factory.mktemp("server")) as url:
        yield url


def require_r() -> None:
    """Fails the test, naming what to install, when R or an R package is missing."""
    if shutil.which("R") is None or shutil.which("Rscript") is None:
        missing("the R client needs R on PATH", R_INSTALL)
    loads = "; ".join(f"library({name})" for name in R_PACKAGES)
    check = subprocess.run(["Rscript", "-e", loads], capture_output=True, text=True)
    if check.returncode != 0:
        missing(f"the R client needs the R packages {', '.join(R_PACKAGES)}\n{check.stderr}",
                R_INSTALL)


@dataclass
class Check:
    log: str  # 00check.log
    output: str  # R CMD check's stdout and stderr
    tests: str  # the testthat run's output (tests/testthat.Rout, or .Rout.fail)


@pytest.fixture(scope="module")
def check(server: str, tmp_path_factory: pytest.TempPathFactory) -> Check:
    """`R CMD build` and `R CMD check --no-manual` of clients/r, once for the module."""
    require_r()
    work = tmp_path_factory.mktemp("rcheck")
    env = {k: v for k, v in os.environ.items() if k != "GRADTAPE_API_KEY"}
    env.update(GRADTAPE_URL=server, _R_CHECK_TESTS_NLINES_="0", LANG="C.UTF-8")
    build = subprocess.run(
        ["R", "CMD", "build", str(PACKAGE)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
    )
    assert build.returncode == 0, f"R CMD build failed:\n{build.stdout}\n{build.stderr}"
    tarballs = list(work.glob("gradtape_*.tar.gz"))
    assert len(tarballs) == 1, f"R CMD build made {tarballs}:\n{build.stdout}"
    result = subprocess.run(
        ["R", "CMD", "check", "--no-manual", tarballs[0].name],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=CHECK_TIMEOUT_S,
    )
    checked = work / "gradtape.Rcheck"
    log = (checked / "00check.log").read_text() if (checked / "00check.log").exists() else ""
    outputs = [checked / "tests" / "testthat.Rout", checked / "tests" / "testthat.Rout.fail"]
    tests = "\n".join(path.read_text() for path in outputs if path.exists())
    return Check(log=log, output=result.stdout + result.stderr, tests=tests)


def test_r_cmd_check_has_no_error_or_warning(check: Check) -> None:
    statuses = STATUS.findall(check.log) or STATUS.findall(check.output)
    assert statuses, f"no status line in R CMD check's log:\n{check.output[-6000:]}"
    status = statuses[-1]
    assert "ERROR" not in status and "WARNING" not in status, (
        f"R CMD check: {status}\n{check.log[-8000:]}\n{check.tests[-8000:]}"
    )


def test_testthat_tests_ran_against_the_server(check: Check) -> None:
    summaries = SUMMARY.findall(check.tests)
    assert summaries, f"no testthat summary in the check's test output:\n{check.tests[-6000:]}"
    fail, warn, skip, passed = (int(n) for n in summaries[-1])
    assert (fail, warn, skip) == (0, 0, 0), check.tests[-8000:]
    assert passed > 0, check.tests[-8000:]


def test_api_md_r_example_is_the_one_tested() -> None:
    """The package tests run the R example of docs/API.md; their copy must be the same."""
    api = (ROOT / "docs" / "API.md").read_text()
    blocks = re.findall(r"```r\n(.*?)```", api, re.DOTALL)
    assert len(blocks) == 1, "docs/API.md should hold one R example"
    tested = (PACKAGE / "tests" / "testthat" / "test-api-example.R").read_text()
    copy = re.search(r"API_EXAMPLE <- '\n(.*?)'\n", tested, re.DOTALL)
    assert copy is not None
    assert copy.group(1) == blocks[0]


def test_op_help_lists_every_shipped_op() -> None:
    """man/gt.Rd is written from inst/ops.json by tools/update_ops.R; it lists every op."""
    ops = json.loads((PACKAGE / "inst" / "ops.json").read_text())
    help_page = (PACKAGE / "man" / "gt.Rd").read_text()
    listed = re.findall(r"\\item\{\\code\{([^}]*)\}\}", help_page)
    assert [item.split(", ") for item in listed] == [[op["name"], *op["aliases"]] for op in ops]
