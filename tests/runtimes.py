"""What a test does when a program it needs (R, Node, redis-server, nginx, ...) is missing.

`bash scripts/test` installs every such program with apt-get when it runs as root (CI), and
then a missing one is a failure: nothing is skipped. Run by a user who cannot install, it
says what is missing and the one command that installs it, and sets
GRADTAPE_TEST_MISSING_OK=1: then only the tests that need a missing program are skipped, each
with the command that would let it run.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

ALLOW_MISSING = "GRADTAPE_TEST_MISSING_OK"


def missing(what: str, install: str) -> NoReturn:
    """Stop the test: `what` is missing; `install` is the command that installs it."""
    message = f"{what}; install: {install} (bash scripts/test does it as root)"
    if os.environ.get(ALLOW_MISSING) == "1":
        pytest.skip(message)
    pytest.fail(message)
