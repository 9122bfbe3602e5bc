"""Run the tutorial examples in examples/ against a real server and check their numbers.

The service is started once for the module on a free loopback port. Each example
prints one line per result, "<part> <label> = <data> <dtype> <shape>"; every
line is compared with the tutorial values in API.md. A missing interpreter is a
failure that names the package to install, not a skip.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.live import live_server
from tests.runtimes import missing

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
EXAMPLE_TIMEOUT_S = 120

R_PACKAGES = ("apt-get install -y --no-install-recommends r-base-core r-cran-httr2 "
              "r-cran-jsonlite r-cran-r6")

# name: (command, {program it needs: how to install it})
EXAMPLE_COMMANDS = {
    "bash": (
        ["bash", "tutorial.sh"],
        {
            "bash": "apt-get install -y bash",
            "curl": "apt-get install -y curl",
            "python3": "apt-get install -y python3",
        },
    ),
    "python": ([sys.executable, "tutorial.py"], {}),
    "python-httpx": ([sys.executable, "tutorial_httpx.py"], {}),
    "node": (
        ["node", "tutorial.mjs"],
        {"node": "apt-get install -y nodejs (Node.js 20 or newer, e.g. from NodeSource)"},
    ),
    "r": (["Rscript", "tutorial.R"], {"Rscript": R_PACKAGES}),
    "r-httr2": (["Rscript", "tutorial_httr2.R"], {"Rscript": R_PACKAGES}),
}

# (part, label, data, shape): every example prints exactly these lines, in this order.
EXPECTED = [
    ("part1", "dz/dx", [[8.0, 8.0], [8.0, 8.0]], [2, 2]),
    ("part2", "dz/dy", 8.0, []),
    ("part3", "dz/dx", 108.0, []),
    ("part3", "dy/dx", 6.0, []),
    ("part4", "n=6 doutput/dx", 12.0, []),
    ("part4", "n=5 doutput/dx", 12.0, []),
    ("part4", "n=4 doutput/dx", 4.0, []),
    ("part5", "dy/dx", 3.0, []),
    ("part5", "d2y/dx2", 6.0, []),
]

LINE = re.compile(r"^(?P<part>part\d) (?P<label>.+) = (?P<data>\S+) (?P<dtype>\S+) (?P<shape>\S+)$")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with live_server(tmp_path_factory.mktemp("server")) as url:
        yield url


def require_tools(name: str) -> list[str]:
    """The example's command line; fails the test if a program it needs is missing."""
    command, needs = EXAMPLE_COMMANDS[name]
    for program, install in needs.items():
        if shutil.which(program) is None:
            missing(f"examples/{command[1]} needs `{program}`, which is not on PATH", install)
    if name == "node":
        version = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout
        major = int(version.lstrip("v").split(".")[0])
        if major < 20:
            missing("examples/tutorial.mjs needs Node.js 20 or newer (has built-in fetch); "
                    f"found {version.strip()}", "a Node.js 20+ package, e.g. from NodeSource")
    if name.startswith("r"):
        check = subprocess.run(
            ["Rscript", "-e", "library(httr2); library(jsonlite); library(R6)"],
            capture_output=True, text=True
        )
        if check.returncode != 0:
            missing(f"examples/{command[1]} needs the R packages httr2, jsonlite and R6\n"
                    f"{check.stderr}", R_PACKAGES)
    return command


@pytest.fixture(scope="module")
def r_library(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The R client package (clients/r) installed into a library of its own."""
    library = tmp_path_factory.mktemp("r-library")
    install = subprocess.run(
        ["R", "CMD", "INSTALL", "--no-test-load", f"--library={library}",
         str(ROOT / "clients" / "r")], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, f"R CMD INSTALL clients/r failed:\n{install.stderr}"
    return str(library)


def run_example(name: str, url: str, request: pytest.FixtureRequest
                ) -> subprocess.CompletedProcess[str]:
    command = require_tools(name)
    env = {**os.environ, "GRADTAPE_URL": url}
    if name == "r":  # library(gradtape)
        env["R_LIBS"] = request.getfixturevalue("r_library")
    return subprocess.run(
        command,
        cwd=EXAMPLES,
        env=env,
        capture_output=True,
        text=True,
        timeout=EXAMPLE_TIMEOUT_S,
    )


@pytest.mark.parametrize("name", list(EXAMPLE_COMMANDS))
def test_example_prints_tutorial_values(name: str, server: str,
                                        request: pytest.FixtureRequest) -> None:
    result = run_example(name, server, request)
    assert result.returncode == 0, (
        f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )

    lines = [line.strip() for line in result.stdout.splitlines() if line.startswith("part")]
    printed = [(m["part"], m["label"]) if (m := LINE.match(line)) else line for line in lines]
    assert printed == [(part, label) for part, label, _, _ in EXPECTED], result.stdout

    for line, (part, label, data, shape) in zip(lines, EXPECTED, strict=True):
        m = LINE.match(line)
        assert m is not None
        got = json.loads(m["data"])
        where = f"{name}: {part} {label}: {line!r}"
        assert m["dtype"] == "float32", where
        assert json.loads(m["shape"]) == shape, where
        assert list(np.shape(got)) == shape, where
        np.testing.assert_allclose(np.asarray(got, dtype=float), data, rtol=1e-6, err_msg=where)


@pytest.mark.parametrize("name", list(EXAMPLE_COMMANDS))
def test_example_reports_http_errors(name: str, server: str,
                                     request: pytest.FixtureRequest) -> None:
    # Under a wrong base path every call is a 404: the example must stop and say so.
    result = run_example(name, f"{server}/no-such-prefix", request)
    assert result.returncode != 0, result.stdout
    assert "404" in result.stderr, result.stderr
    assert not any(line.startswith("part") for line in result.stdout.splitlines()), result.stdout
