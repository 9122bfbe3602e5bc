"""Checks of the Kubernetes manifests in deploy/kubernetes/, offline.

No cluster, kubectl or kustomize binary is needed:

- every manifest, and everything each kustomization renders to, is validated against the
  Kubernetes OpenAPI schemas shipped in the pip package ``kubernetes-validate`` (``test``
  extra), in strict mode (an unknown or misspelt field is an error), for Kubernetes 1.30
  and for the newest version the package ships;
- the kustomizations are rendered by the small renderer below, which implements only what
  they use (``resources``, ``images``, JSON 6902 ``patches``) and fails on anything else,
  so that it cannot silently render less than kustomize would;
- semantic checks of the rendered objects follow (probes, environment, Secret references,
  resources, security context, shutdown timing, selectors, the HPA's target, Redis, the GPU
  overlay). Each check is also run on a broken copy of the objects, to show it can fail.
"""

from __future__ import annotations

import copy
import os
import re
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

try:
    import kubernetes_validate
except ImportError as exc:  # a failure naming the package, never a skip
    raise ImportError("the pip package 'kubernetes-validate' is missing: install the test "
                      "extra (pip install -e '.[test]')") from exc

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
BASE = K8S / "base"
GPU = K8S / "gpu"
EXAMPLE_SECRET = K8S / "secret.example.yaml"
DOCKERFILE = ROOT / "Dockerfile"

KUBERNETES_VERSIONS = ("1.30", kubernetes_validate.latest_version())
API_NAME = "gradtape"
REDIS_NAME = "gradtape-redis"
READY_PATH = "/v1/health/ready"
LIVE_PATH = "/v1/health/live"
# The Redis store's settings: accepted here before and after service/config.py has them.
REDIS_SETTINGS = {"GRADTAPE_STORE", "GRADTAPE_REDIS_URL"}

Doc = dict[str, Any]


# ----- loading and rendering -----


def load_docs(path: Path) -> list[Doc]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    for doc in docs:
        assert isinstance(doc, dict), f"{path}: a document that is not a mapping"
    return docs


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def kustomization_dirs() -> list[Path]:
    return sorted(p.parent for p in K8S.rglob("kustomization.yaml"))


KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "images", "patches"}
IMAGE_KEYS = {"name", "newName", "newTag", "digest"}
PATCH_TARGET_KEYS = {"group", "version", "kind", "name"}


def render(directory: Path, _loaders: tuple[Path, ...] = ()) -> list[Doc]:
    """What `kustomize build directory` gives, for the features these kustomizations use."""
    directory = directory.resolve()
    for root in _loaders:
        # kustomize refuses a base that contains the overlay loading it ("cycle detected")
        assert not root.is_relative_to(directory), (
            f"{root} loads {directory}, which contains it: kustomize reports a cycle")
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    where = shown(directory)
    unknown = set(spec) - KUSTOMIZATION_KEYS
    assert not unknown, f"{where}: this renderer does not implement {sorted(unknown)}"
    assert spec.get("apiVersion") == "kustomize.config.k8s.io/v1beta1", where
    assert spec.get("kind") == "Kustomization", where

    docs: list[Doc] = []
    for entry in spec.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            docs += render(path, (*_loaders, directory))
        else:
            # kustomize's default load restrictor: files in or below the kustomization
            assert path.is_relative_to(directory), f"{where}: {entry} is outside its root"
            docs += load_docs(path)
    for image in spec.get("images", []):
        set_image(docs, image, where)
    for patch in spec.get("patches", []):
        apply_patch(docs, patch, directory)

    names = [(d["apiVersion"], d["kind"], d["metadata"]["name"]) for d in docs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    assert not duplicates, f"{where}: objects defined twice: {duplicates}"
    return docs


def shown(path: Path) -> Path:
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def split_image(image: str) -> tuple[str, str]:
    """`registry:5000/name:tag@sha256:...` -> (`registry:5000/name`, `:tag@sha256:...`)."""
    name, at, digest = image.partition("@")
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = name.rsplit(":", 1)
        return name, f":{tag}{at}{digest}"
    return name, f"{at}{digest}"


def pod_specs(doc: Doc) -> list[Doc]:
    template = doc.get("spec", {}).get("template", {})
    return [template["spec"]] if "spec" in template else []


def set_image(docs: list[Doc], image: Doc, where: Path) -> None:
    """kustomize's `images` transformer on pod templates' containers."""
    unknown = set(image) - IMAGE_KEYS
    assert not unknown, f"{where}: images field(s) {sorted(unknown)} not implemented"
    matched = False
    for doc in docs:
        for spec in pod_specs(doc):
            for container in spec.get("containers", []) + spec.get("initContainers", []):
                name, suffix = split_image(container["image"])
                if name != image["name"]:
                    continue
                matched = True
                name = image.get("newName", name)
                if "digest" in image:
                    suffix = f"@{image['digest']}"
                elif "newTag" in image:
                    suffix = f":{image['newTag']}"
                container["image"] = name + suffix
    assert matched, f"{where}: the images entry {image['name']!r} matches no container"


def apply_patch(docs: list[Doc], entry: Doc, directory: Path) -> None:
    """A `patches` entry holding a JSON 6902 patch (inline or in a file) and a target."""
    assert set(entry) <= {"target", "patch", "path"}, f"unsupported patch fields: {entry}"
    text = entry["patch"] if "patch" in entry else (directory / entry["path"]).read_text()
    ops = yaml.safe_load(text)
    assert isinstance(ops, list), (
        f"{shown(directory)}: only JSON 6902 patches (a list of operations) are "
        "rendered here; a strategic merge patch would need kustomize itself")
    target = entry["target"]
    assert set(target) <= PATCH_TARGET_KEYS, f"unsupported target selectors: {target}"
    hits = [d for d in docs if matches(d, target)]
    assert hits, f"{shown(directory)}: patch target {target} matches nothing"
    for doc in hits:
        for op in ops:
            json_patch(doc, op)


def matches(doc: Doc, target: Doc) -> bool:
    group, _, version = doc["apiVersion"].rpartition("/")
    wanted = {"group": group, "version": version, "kind": doc["kind"],
              "name": doc["metadata"]["name"]}
    return all(wanted[k] == v for k, v in target.items())


def json_patch(doc: Doc, op: Doc) -> None:
    """One RFC 6902 operation (add, replace, remove, test), in place."""
    parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
    parent: Any = doc
    for part in parts[:-1]:
        parent = parent[int(part)] if isinstance(parent, list) else parent[part]
    key: Any = parts[-1]
    kind = op["op"]
    if isinstance(parent, list) and not (kind == "add" and key == "-"):
        key = int(key)
        assert 0 <= key < len(parent) + (kind == "add"), f"index out of range: {op}"
    elif isinstance(parent, dict) and kind != "add":
        assert key in parent, f"{op['path']} does not exist: {op}"
    if kind == "add":
        if isinstance(parent, list):
            parent.insert(len(parent) if key == "-" else key, copy.deepcopy(op["value"]))
        else:
            parent[key] = copy.deepcopy(op["value"])
    elif kind == "replace":
        parent[key] = copy.deepcopy(op["value"])
    elif kind == "remove":
        del parent[key]
    elif kind == "test":
        assert parent[key] == op["value"], f"test failed: {op}"
    else:
        raise AssertionError(f"operation {kind!r} not implemented")


# ----- lookups -----


def find(docs: list[Doc], kind: str, name: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def container(workload: Doc, name: str) -> Doc:
    containers = workload["spec"]["template"]["spec"]["containers"]
    found = [c for c in containers if c["name"] == name]
    assert len(found) == 1, f"{workload['metadata']['name']}: no single container {name!r}"
    return found[0]


def env_of(c: Doc) -> dict[str, Doc]:
    names = [e["name"] for e in c.get("env", [])]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    assert not duplicates, f"container {c['name']}: variables set twice: {duplicates}"
    return {e["name"]: e for e in c.get("env", [])}


def plain_env(c: Doc) -> dict[str, str]:
    return {k: e["value"] for k, e in env_of(c).items() if "value" in e}


def resolve_port(c: Doc, port: int | str) -> int:
    if isinstance(port, int):
        return port
    named = [p["containerPort"] for p in c.get("ports", []) if p.get("name") == port]
    assert len(named) == 1, f"container {c['name']} has no port named {port!r}"
    return named[0]


def labels_select(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def dockerfile_facts() -> tuple[int, int]:
    """The port the image's CMD serves on and the uid it runs as."""
    text = DOCKERFILE.read_text()
    cmd = re.findall(r"^CMD\s+(\[.*\])\s*$", text, re.M)
    assert cmd, "the Dockerfile has no exec-form CMD"
    args = yaml.safe_load(cmd[-1])
    port = int(args[args.index("--port") + 1])
    user = re.findall(r"^USER\s+(\d+)", text, re.M)
    assert user, "the Dockerfile has no numeric USER"
    return port, int(user[-1])


QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")
FACTORS = {None: 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
           "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity(value: str | int | float) -> float:
    match = QUANTITY.match(str(value))
    assert match, f"not a quantity this test reads: {value!r}"
    return float(match[1]) * FACTORS[match[2]]


def redis_bytes(value: str) -> float:
    """A size in redis.conf: 1gb, 512mb, 100000 (bytes), 1g (powers of 1000)."""
    match = re.match(r"^(\d+)(kb|mb|gb|k|m|g)?$", value.lower())
    assert match, f"not a Redis size: {value!r}"
    unit = match[2] or ""
    factor = {"": 1, "k": 1e3, "kb": 2**10, "m": 1e6, "mb": 2**20, "g": 1e9, "gb": 2**30}
    return int(match[1]) * factor[unit]


def sleep_seconds(c: Doc) -> int:
    """How long the preStop hook waits: `sleep N` or the sleep action."""
    pre_stop = c.get("lifecycle", {}).get("preStop", {})
    if "sleep" in pre_stop:
        return int(pre_stop["sleep"]["seconds"])
    command = pre_stop.get("exec", {}).get("command", [])
    if len(command) == 3 and command[0] in ("sh", "/bin/sh") and command[1] == "-c":
        command = shlex.split(command[2])
    assert len(command) == 2 and command[0] in ("sleep", "/bin/sleep"), (
        f"container {c['name']}: no preStop sleep (found {pre_stop or 'nothing'})")
    return int(command[1])


# ----- fixtures -----


@pytest.fixture(scope="module")
def secret() -> Doc:
    docs = load_docs(EXAMPLE_SECRET)
    assert len(docs) == 1
    return docs[0]


@pytest.fixture(scope="module", params=["base", "gpu"])
def rendered(request: pytest.FixtureRequest) -> list[Doc]:
    return render(BASE if request.param == "base" else GPU)


@pytest.fixture(scope="module")
def base_docs() -> list[Doc]:
    return render(BASE)


@pytest.fixture(scope="module")
def gpu_docs() -> list[Doc]:
    return render(GPU)


# ----- schema validation -----


def test_the_tree_is_as_expected() -> None:
    assert kustomization_dirs() == [BASE, GPU]
    assert EXAMPLE_SECRET in manifest_files()


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_manifest_matches_the_kubernetes_schema(path: Path, version: str) -> None:
    docs = load_docs(path)
    assert docs, f"{path} holds no object"
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("directory", [BASE, GPU], ids=["base", "gpu"])
def test_rendered_kustomization_matches_the_schema(directory: Path, version: str) -> None:
    docs = render(directory)
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_strict_validation_rejects_an_unknown_field(base_docs: list[Doc]) -> None:
    deployment = copy.deepcopy(find(base_docs, "Deployment", API_NAME))
    container(deployment, "api")["readinessProbe"]["httpGett"] = {"path": READY_PATH}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


def test_every_manifest_is_rendered_or_is_the_example_secret() -> None:
    rendered_files = set()
    for directory in kustomization_dirs():
        spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
        rendered_files |= {(directory / r).resolve() for r in spec.get("resources", [])}
    orphans = [p for p in manifest_files() if p.resolve() not in rendered_files]
    assert orphans == [EXAMPLE_SECRET], "manifests no kustomization applies"


def test_the_renderer_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        "commonLabels: {a: b}\n")
    with pytest.raises(AssertionError, match="does not implement"):
        render(tmp_path)


def test_the_renderer_applies_json_patches() -> None:
    doc = {"a": {"b": [1, 2], "c": {"x/y": 1}}}
    json_patch(doc, {"op": "add", "path": "/a/b/-", "value": 3})
    json_patch(doc, {"op": "add", "path": "/a/b/0", "value": 0})
    json_patch(doc, {"op": "replace", "path": "/a/c/x~1y", "value": 2})
    json_patch(doc, {"op": "remove", "path": "/a/b/1"})
    json_patch(doc, {"op": "test", "path": "/a/c/x~1y", "value": 2})
    assert doc == {"a": {"b": [0, 2, 3], "c": {"x/y": 2}}}
    with pytest.raises(AssertionError):
        json_patch(doc, {"op": "replace", "path": "/a/missing", "value": 1})
    with pytest.raises(AssertionError):
        json_patch(doc, {"op": "test", "path": "/a/b/0", "value": 9})
    assert split_image("reg:5000/team/gradtape:cpu") == ("reg:5000/team/gradtape", ":cpu")
    assert split_image("gradtape@sha256:ab") == ("gradtape", "@sha256:ab")


# ----- semantic checks (each raises AssertionError naming what is wrong) -----


def check_probes(docs: list[Doc]) -> None:
    port, _ = dockerfile_facts()
    deployment = find(docs, "Deployment", API_NAME)
    api = container(deployment, "api")
    wanted = {"readinessProbe": READY_PATH, "livenessProbe": LIVE_PATH,
              "startupProbe": LIVE_PATH}
    for probe, path in wanted.items():
        assert probe in api, f"the api container has no {probe}"
        get = api[probe].get("httpGet")
        assert get, f"{probe} is not an HTTP GET"
        assert get["path"] == path, f"{probe} asks {get['path']}, not {path}"
        assert resolve_port(api, get["port"]) == port, f"{probe} is not on port {port}"
    startup = api["startupProbe"]
    window = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
    assert window >= 120, f"the startup probe gives only {window} s for JAX to import"


def check_env(docs: list[Doc], secret: Doc) -> None:
    api = container(find(docs, "Deployment", API_NAME), "api")
    env = env_of(api)
    assert env.get("GRADTAPE_STORE", {}).get("value") == "redis", "GRADTAPE_STORE is not redis"
    url = env.get("GRADTAPE_REDIS_URL", {}).get("valueFrom", {}).get("secretKeyRef")
    assert url, "GRADTAPE_REDIS_URL does not come from a Secret (secretKeyRef)"
    assert url["name"] == secret["metadata"]["name"], "GRADTAPE_REDIS_URL: another Secret"
    assert url["key"] in secret["stringData"], "GRADTAPE_REDIS_URL: key not in the Secret"
    assert not url.get("optional", False), "GRADTAPE_REDIS_URL must not be optional"
    keys = env.get("GRADTAPE_API_KEYS", {}).get("valueFrom", {}).get("secretKeyRef")
    assert keys, "GRADTAPE_API_KEYS does not come from a Secret (secretKeyRef)"
    assert keys["name"] == secret["metadata"]["name"], "GRADTAPE_API_KEYS: another Secret"
    assert keys["key"] in secret["stringData"], "GRADTAPE_API_KEYS: key not in the Secret"
    assert keys.get("optional") is True, "GRADTAPE_API_KEYS should be optional"
    for name, var in env.items():
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            assert ref["name"] == secret["metadata"]["name"], f"{name}: unknown Secret"
            assert ref["key"] in secret["stringData"], f"{name}: key not in the Secret"


def check_resources(docs: list[Doc]) -> None:
    for doc in docs:
        for spec in pod_specs(doc):
            for c in spec.get("containers", []) + spec.get("initContainers", []):
                where = f"{doc['metadata']['name']}/{c['name']}"
                res = c.get("resources", {})
                for resource in ("cpu", "memory"):
                    request = res.get("requests", {}).get(resource)
                    limit = res.get("limits", {}).get(resource)
                    assert request is not None, f"{where}: no {resource} request"
                    assert limit is not None, f"{where}: no {resource} limit"
                    assert quantity(request) <= quantity(limit), (
                        f"{where}: {resource} request above its limit")


def check_security(docs: list[Doc]) -> None:
    _, uid = dockerfile_facts()
    deployment = find(docs, "Deployment", API_NAME)
    spec = deployment["spec"]["template"]["spec"]
    api = container(deployment, "api")
    pod_ctx, ctx = spec.get("securityContext", {}), api.get("securityContext", {})

    def effective(key: str) -> Any:
        return ctx.get(key, pod_ctx.get(key))

    assert effective("runAsNonRoot") is True, "runAsNonRoot is not set"
    assert effective("runAsUser") == uid, f"runAsUser is not the image's uid {uid}"
    assert ctx.get("readOnlyRootFilesystem") is True, "the root filesystem is writable"
    assert ctx.get("allowPrivilegeEscalation") is False, "privilege escalation is allowed"
    assert spec.get("enableServiceLinks") is False, (
        "service links put GRADTAPE_PORT=tcp://... into the environment, which the service "
        "reads as its port setting")
    empty_dirs = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
    mounts = {m["mountPath"]: m["name"] for m in api.get("volumeMounts", [])}
    cache_dir = plain_env(api).get("GRADTAPE_COMPILE_CACHE_DIR")
    assert cache_dir, "GRADTAPE_COMPILE_CACHE_DIR is not set"
    for path in ("/tmp", cache_dir):
        assert mounts.get(path) in empty_dirs, f"{path} is not an emptyDir mount"


def check_shutdown(docs: list[Doc]) -> None:
    deployment = find(docs, "Deployment", API_NAME)
    api = container(deployment, "api")
    timeout = plain_env(api).get("GRADTAPE_SHUTDOWN_TIMEOUT_SECONDS")
    assert timeout is not None, "GRADTAPE_SHUTDOWN_TIMEOUT_SECONDS is not set"
    grace = deployment["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
    drain = sleep_seconds(api)
    assert drain > 0, "the preStop sleep is zero"
    assert grace > int(timeout) + drain, (
        f"terminationGracePeriodSeconds {grace} is not above the preStop sleep ({drain}) "
        f"plus the shutdown timeout ({timeout})")


def check_service(docs: list[Doc]) -> None:
    port, _ = dockerfile_facts()
    deployment = find(docs, "Deployment", API_NAME)
    service = find(docs, "Service", API_NAME)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert labels_select(selector, pod_labels), "the Deployment's selector misses its pods"
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert labels_select(service["spec"]["selector"], pod_labels), (
        "the Service's selector does not match the API's pod labels")
    (svc_port,) = service["spec"]["ports"]
    assert svc_port["port"] == 80, "the Service does not listen on 80"
    target = svc_port.get("targetPort", svc_port["port"])
    assert resolve_port(container(deployment, "api"), target) == port, (
        f"the Service does not forward to {port}")
    redis = find(docs, "StatefulSet", REDIS_NAME)
    redis_labels = redis["spec"]["template"]["metadata"]["labels"]
    assert not labels_select(service["spec"]["selector"], redis_labels), (
        "the API Service also selects the Redis pods")


def check_autoscaling(docs: list[Doc]) -> None:
    deployment = find(docs, "Deployment", API_NAME)
    hpa = find(docs, "HorizontalPodAutoscaler", API_NAME)
    assert hpa["apiVersion"] == "autoscaling/v2"
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == (
        "apps/v1", "Deployment", deployment["metadata"]["name"]), (
        f"the HPA targets {ref}, not the Deployment")
    low, high = hpa["spec"].get("minReplicas", 1), hpa["spec"]["maxReplicas"]
    assert 2 <= low <= high, "the HPA's replica range is off"
    assert low <= deployment["spec"]["replicas"] <= high
    cpu = [m for m in hpa["spec"]["metrics"]
           if m["type"] == "Resource" and m["resource"]["name"] == "cpu"]
    assert cpu and cpu[0]["resource"]["target"]["type"] == "Utilization", (
        "the HPA does not scale on CPU utilisation")
    pdb = find(docs, "PodDisruptionBudget", API_NAME)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels_select(pdb["spec"]["selector"]["matchLabels"], pod_labels), (
        "the PodDisruptionBudget does not select the API's pods")
    if "maxUnavailable" in pdb["spec"]:
        allowed = int(pdb["spec"]["maxUnavailable"])
    else:
        allowed = low - int(pdb["spec"]["minAvailable"])
    assert 1 <= allowed < low, "the PodDisruptionBudget blocks drains or allows an outage"


def check_redis(docs: list[Doc], secret: Doc) -> None:
    redis = find(docs, "StatefulSet", REDIS_NAME)
    headless = find(docs, "Service", redis["spec"]["serviceName"])
    assert headless["spec"].get("clusterIP") == "None", "the Redis Service is not headless"
    pod_labels = redis["spec"]["template"]["metadata"]["labels"]
    assert labels_select(headless["spec"]["selector"], pod_labels)
    assert labels_select(redis["spec"]["selector"]["matchLabels"], pod_labels)
    server = container(redis, "redis")
    assert server["image"].startswith("redis:7"), "Redis is not redis:7"
    claims = {t["metadata"]["name"] for t in redis["spec"].get("volumeClaimTemplates", [])}
    assert claims, "Redis has no volumeClaimTemplate"
    mounts = {m["name"]: m["mountPath"] for m in server.get("volumeMounts", [])}
    config = find(docs, "ConfigMap", REDIS_NAME)["data"]["redis.conf"]
    settings = dict(line.split(None, 1) for line in config.splitlines()
                    if line.strip() and not line.lstrip().startswith("#"))
    assert settings.get("appendonly") == "yes", "AOF is off"
    assert settings.get("maxmemory-policy") == "noeviction", "Redis may evict sessions"
    assert mounts.get(next(iter(claims))) == settings.get("dir"), (
        "Redis does not write to its persistent volume")
    limit = quantity(server["resources"]["limits"]["memory"])
    assert 0 < redis_bytes(settings["maxmemory"]) <= 0.75 * limit, (
        "maxmemory leaves no room below the memory limit")
    assert "/etc/redis/redis.conf" in server.get("args", []) + server.get("command", [])
    # the Secret's URL points at this Redis, with its password
    url = urlsplit(secret["stringData"]["redis-url"])
    assert url.scheme == "redis"
    assert url.hostname in (REDIS_NAME, f"{REDIS_NAME}-0.{REDIS_NAME}"), (
        f"redis-url names {url.hostname}, not the Redis Service")
    (port,) = headless["spec"]["ports"]
    assert url.port == resolve_port(server, port["targetPort"]) == port["port"]
    assert url.password == secret["stringData"]["redis-password"]


def check_gpu(docs: list[Doc]) -> None:
    api = container(find(docs, "Deployment", API_NAME), "api")
    limits = api["resources"]["limits"]
    assert int(limits.get("nvidia.com/gpu", 0)) >= 1, "the GPU variant asks no nvidia.com/gpu"
    requests = api["resources"].get("requests", {})
    assert requests.get("nvidia.com/gpu", limits["nvidia.com/gpu"]) == limits["nvidia.com/gpu"]
    assert api["image"].endswith(":cuda12"), f"not the CUDA image: {api['image']}"
    assert plain_env(api).get("JAX_PLATFORMS") == "cuda"


# ----- the checks on the manifests -----


def test_probes(rendered: list[Doc]) -> None:
    check_probes(rendered)


def test_environment_and_secrets(rendered: list[Doc], secret: Doc) -> None:
    check_env(rendered, secret)


def test_resources(rendered: list[Doc]) -> None:
    check_resources(rendered)


def test_security_context(rendered: list[Doc]) -> None:
    check_security(rendered)


def test_shutdown_timing(rendered: list[Doc]) -> None:
    check_shutdown(rendered)


def test_service(rendered: list[Doc]) -> None:
    check_service(rendered)


def test_autoscaling_and_disruption_budget(rendered: list[Doc]) -> None:
    check_autoscaling(rendered)


def test_redis(rendered: list[Doc], secret: Doc) -> None:
    check_redis(rendered, secret)


def test_gpu_variant(gpu_docs: list[Doc], base_docs: list[Doc]) -> None:
    check_gpu(gpu_docs)
    with pytest.raises(AssertionError):
        check_gpu(base_docs)  # the CPU manifests ask no GPU
    api = container(find(gpu_docs, "Deployment", API_NAME), "api")
    tolerations = find(gpu_docs, "Deployment", API_NAME)["spec"]["template"]["spec"].get(
        "tolerations", [])
    assert any(t.get("key") == "nvidia.com/gpu" for t in tolerations)
    assert api["image"] == "gradtape:cuda12"
    # the overlay changes the API's Deployment only
    others = [d for d in gpu_docs if (d["kind"], d["metadata"]["name"]) != ("Deployment",
                                                                           API_NAME)]
    assert others == [d for d in base_docs if (d["kind"], d["metadata"]["name"]) != (
        "Deployment", API_NAME)]


def test_deployment_environment_is_valid_settings(
        rendered: list[Doc], secret: Doc, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.config import Settings

    api = container(find(rendered, "Deployment", API_NAME), "api")
    env = plain_env(api)
    for name, var in env_of(api).items():
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            env[name] = secret["stringData"][ref["key"]]
    settings_env = {k: v for k, v in env.items() if k.startswith("GRADTAPE_")}
    known = {f"GRADTAPE_{field.upper()}" for field in Settings.model_fields} | REDIS_SETTINGS
    assert set(settings_env) <= known, f"not settings: {sorted(set(settings_env) - known)}"
    for name in [n for n in os.environ if n.startswith("GRADTAPE_")]:
        monkeypatch.delenv(name)
    for name, value in settings_env.items():
        monkeypatch.setenv(name, value)
    settings = Settings(_env_file=None)
    assert settings.shutdown_timeout_seconds == int(env["GRADTAPE_SHUTDOWN_TIMEOUT_SECONDS"])
    assert settings.compile_cache_dir == env["GRADTAPE_COMPILE_CACHE_DIR"]
    assert len(settings.api_key_set) == 2


def test_example_secret_holds_placeholders_only(secret: Doc) -> None:
    assert secret["kind"] == "Secret" and secret["type"] == "Opaque"
    assert "data" not in secret, "base64 data hides what the values are: use stringData"
    for key, value in secret["stringData"].items():
        assert "CHANGE-ME" in value, f"{key} is not marked as a placeholder"
    assert "EXAMPLE" in EXAMPLE_SECRET.read_text().splitlines()[0]


# ----- each check fails on a broken copy -----


def _api(docs: list[Doc]) -> Doc:
    return container(find(docs, "Deployment", API_NAME), "api")


def _pod(docs: list[Doc]) -> Doc:
    return find(docs, "Deployment", API_NAME)["spec"]["template"]["spec"]


def _env(docs: list[Doc], name: str) -> Doc:
    return env_of(_api(docs))[name]


def _replace(var: Doc, **fields: Any) -> None:
    """An env entry given other fields (`value` instead of `valueFrom`, say)."""
    name = var["name"]
    var.clear()
    var.update(name=name, **fields)


BREAKAGES: dict[str, tuple[Callable[..., None], Callable[[list[Doc]], None]]] = {
    "readiness on the live path": (
        check_probes, lambda d: _api(d)["readinessProbe"]["httpGet"].update(path=LIVE_PATH)),
    "liveness on another port": (
        check_probes, lambda d: _api(d)["livenessProbe"]["httpGet"].update(port=8080)),
    "short startup probe": (
        check_probes, lambda d: _api(d)["startupProbe"].update(failureThreshold=3)),
    "memory store": (check_env, lambda d: _env(d, "GRADTAPE_STORE").update(value="memory")),
    "Redis URL in plain text": (
        check_env, lambda d: _replace(_env(d, "GRADTAPE_REDIS_URL"), value="redis://x")),
    "Redis URL from a key the Secret lacks": (
        check_env, lambda d: _env(d, "GRADTAPE_REDIS_URL")["valueFrom"]["secretKeyRef"].update(
            key="url")),
    "API keys required": (
        check_env, lambda d: _env(d, "GRADTAPE_API_KEYS")["valueFrom"]["secretKeyRef"].pop(
            "optional")),
    "no memory limit": (check_resources, lambda d: _api(d)["resources"]["limits"].pop("memory")),
    "no CPU request": (check_resources, lambda d: _api(d)["resources"]["requests"].pop("cpu")),
    "root user": (check_security, lambda d: _pod(d)["securityContext"].update(runAsUser=0)),
    "writable root": (
        check_security, lambda d: _api(d)["securityContext"].pop("readOnlyRootFilesystem")),
    "service links": (check_security, lambda d: _pod(d).pop("enableServiceLinks")),
    "no /tmp volume": (
        check_security, lambda d: _api(d).update(volumeMounts=_api(d)["volumeMounts"][1:])),
    "short grace period": (
        check_shutdown, lambda d: _pod(d).update(terminationGracePeriodSeconds=20)),
    "no preStop": (check_shutdown, lambda d: _api(d).pop("lifecycle")),
    "Service selector off": (
        check_service, lambda d: find(d, "Service", API_NAME)["spec"]["selector"].update(
            {"app.kubernetes.io/component": "web"})),
    "Service on 8080": (
        check_service, lambda d: find(d, "Service", API_NAME)["spec"]["ports"][0].update(
            targetPort=8080)),
    "HPA on another Deployment": (
        check_autoscaling, lambda d: find(d, "HorizontalPodAutoscaler", API_NAME)["spec"][
            "scaleTargetRef"].update(name="gradtape-api")),
    "PDB allows no disruption": (
        check_autoscaling, lambda d: find(d, "PodDisruptionBudget", API_NAME)["spec"].update(
            maxUnavailable=0)),
    "Redis with eviction": (
        check_redis, lambda d: find(d, "ConfigMap", REDIS_NAME)["data"].update(
            {"redis.conf": find(d, "ConfigMap", REDIS_NAME)["data"]["redis.conf"].replace(
                "noeviction", "allkeys-lru")})),
    "Redis Service not headless": (
        check_redis, lambda d: find(d, "Service", REDIS_NAME)["spec"].pop("clusterIP")),
    "no GPU limit": (
        check_gpu, lambda d: _api(d)["resources"]["limits"].pop("nvidia.com/gpu")),
}


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_check_fails_on_a_broken_copy(breakage: str, gpu_docs: list[Doc], secret: Doc) -> None:
    check, breaks = BREAKAGES[breakage]
    args = (secret,) if check in (check_env, check_redis) else ()
    check(gpu_docs, *args)  # passes as the manifests are
    broken = copy.deepcopy(gpu_docs)
    breaks(broken)
    with pytest.raises(AssertionError):
        check(broken, *args)
