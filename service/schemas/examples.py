"""The tutorial of API.md as examples: requests that succeed when sent in order, and the
answers they get.

`SESSION_WALK` is the order: create a session, PUT x = [[1, 1], [1, 1]], open a persistent tape,
watch x, run y = reduce_sum(x) and z = multiply(y, y), stop the tape, ask it for derivatives
(the gradient of z with respect to x is [[8, 8], [8, 8]]), then delete it all. /docs' "Try it
out" works in that order; the ids to paste are in the previous answers.
"""

from __future__ import annotations

from typing import Any

X = [[1, 1], [1, 1]]

TUTORIAL_GRAPH: dict[str, Any] = {
    "inputs": {"x": {"dtype": "float32", "shape": [2, 2]}},
    "nodes": [
        {"id": "y", "op": "reduce_sum", "args": ["x"]},
        {"id": "z", "op": "multiply", "args": ["y", "y"]},
    ],
    "outputs": ["z"],
}
TUTORIAL_INPUTS: dict[str, Any] = {"x": X}
TUTORIAL_GRAPH_ID = "g_20a9c38f8c00a7f36a99b4fac5b9bdbd"
"""The id POST /v1/graphs gives TUTORIAL_GRAPH (a hash of its canonical form)."""

SESSION_ID = "s_4f0c2a9e8b7d4c1e9a3b5d7f1e2c4a6b"
TAPE_ID = "t_9c1e4b7a2d5f"
EXPIRES_AT = "2025-01-01T12:15:00Z"


def f32(data: Any, shape: list[int]) -> dict[str, Any]:
    return {"dtype": "float32", "shape": shape, "data": data}


ONES = f32([[1.0, 1.0], [1.0, 1.0]], [2, 2])
EIGHTS = f32([[8.0, 8.0], [8.0, 8.0]], [2, 2])
Y = f32(4.0, [])
Z = f32(16.0, [])
TWOS = f32([[[[2.0, 2.0], [2.0, 2.0]], [[2.0, 2.0], [2.0, 2.0]]],
            [[[2.0, 2.0], [2.0, 2.0]], [[2.0, 2.0], [2.0, 2.0]]]], [2, 2, 2, 2])
IDENTITY_ROWS = f32([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]]], [2, 2, 2])

# ----- request bodies


def stateless(**fields: Any) -> dict[str, Any]:
    return {"graph": TUTORIAL_GRAPH, "inputs": TUTORIAL_INPUTS, **fields}


EVALUATE = stateless(outputs=["y", "z"])
STATELESS_GRADIENT = stateless(target="z", sources=["x"])
STATELESS_JACOBIAN = stateless(target="y", sources=["x"])
STATELESS_HVP = stateless(target="z", sources=["x"], vectors={"x": X})
STATELESS_HESSIAN = stateless(target="z", sources=["x"])
JVP = stateless(tangents={"x": X}, outputs=["z"])

SESSION: dict[str, Any] = {"ttl_seconds": 900}
PUT_X: dict[str, Any] = {"value": X, "variable": True, "trainable": True}
OPEN_TAPE: dict[str, Any] = {"persistent": True, "watch_accessed_variables": True}
WATCH_X: dict[str, Any] = {"tensors": ["x"]}
RUN: dict[str, Any] = {"nodes": TUTORIAL_GRAPH["nodes"]}
GRADIENT: dict[str, Any] = {"target": "z", "sources": ["x"]}
JACOBIAN: dict[str, Any] = {"target": "y", "sources": ["x"]}
BATCH_JACOBIAN: dict[str, Any] = {"target": "x", "sources": ["x"]}
HVP: dict[str, Any] = {"target": "z", "sources": ["x"], "vectors": {"x": X}}
HESSIAN: dict[str, Any] = {"target": "z", "sources": ["x"]}
CREATE_OPTIMIZER: dict[str, Any] = {"name": "sgd", "method": "sgd", "learning_rate": 0.5,
                                    "variables": ["x"]}
APPLY: dict[str, Any] = {"gradients": {"x": X}}
STEP: dict[str, Any] = {"nodes": [{"id": "s", "op": "reduce_sum", "args": ["x"]},
                                  {"id": "loss", "op": "multiply", "args": ["s", "s"]}],
                        "target": "loss", "optimizer": "sgd", "fetch": ["loss"]}

REQUESTS: dict[tuple[str, str], dict[str, Any]] = {
    ("post", "/v1/graphs"): TUTORIAL_GRAPH,
    ("post", "/v1/evaluate"): EVALUATE,
    ("post", "/v1/gradient"): STATELESS_GRADIENT,
    ("post", "/v1/jacobian"): STATELESS_JACOBIAN,
    ("post", "/v1/hvp"): STATELESS_HVP,
    ("post", "/v1/hessian"): STATELESS_HESSIAN,
    ("post", "/v1/jvp"): JVP,
    ("post", "/v1/sessions"): SESSION,
    ("put", "/v1/sessions/{session_id}/tensors/{name}"): PUT_X,
    ("post", "/v1/sessions/{session_id}/tapes"): OPEN_TAPE,
    ("post", "/v1/sessions/{session_id}/tapes/{tape_id}/watch"): WATCH_X,
    ("post", "/v1/sessions/{session_id}/run"): RUN,
    ("post", "/v1/sessions/{session_id}/tapes/{tape_id}/gradient"): GRADIENT,
    ("post", "/v1/sessions/{session_id}/tapes/{tape_id}/jacobian"): JACOBIAN,
    ("post", "/v1/sessions/{session_id}/tapes/{tape_id}/batch_jacobian"): BATCH_JACOBIAN,
    ("post", "/v1/sessions/{session_id}/tapes/{tape_id}/hvp"): HVP,
    ("post", "/v1/sessions/{session_id}/tapes/{tape_id}/hessian"): HESSIAN,
    ("post", "/v1/sessions/{session_id}/optimizers"): CREATE_OPTIMIZER,
    ("post", "/v1/sessions/{session_id}/optimizers/{optimizer}/apply"): APPLY,
    ("post", "/v1/sessions/{session_id}/step"): STEP,
}
"""The request body of each operation in the tutorial, keyed by (method, path)."""

PATH_PARAMETERS = {"name": "x", "graph_id": TUTORIAL_GRAPH_ID, "optimizer": "sgd"}
"""Path parameters the tutorial names; session and tape ids come from earlier answers."""

# ----- answers


def tape_info(*states: dict[str, Any]) -> dict[str, Any]:
    info = {"tape_id": TAPE_ID, "persistent": True, "recording": True, "stopped": False,
            "paused": False, "watch_accessed_variables": True, "watched": ["x"],
            "ops_recorded": 0, "used": False}
    for state in states:
        info.update(state)
    return info


STOPPED = {"recording": False, "stopped": True, "ops_recorded": 2}
USED = {"used": True}
TAPE_AFTER_QUERIES = tape_info(STOPPED, USED)


def tensor_info(name: str, shape: list[int], variable: bool = False) -> dict[str, Any]:
    return {"name": name, "dtype": "float32", "shape": shape, "variable": variable,
            "trainable": variable}


VALUE_GRADIENT = {"value": Z, "gradients": {"x": EIGHTS}}

OP_SUM = {
    "name": "sum", "aliases": ["reduce_sum", "math.reduce_sum"], "arity": 1, "min_args": 1,
    "max_args": 1, "attrs": {
        "axis": {"type": "axis", "required": False, "default": None,
                 "doc": "axis or axes to reduce; null reduces all"},
        "keepdims": {"type": "bool", "required": False, "default": False,
                     "doc": "keep reduced axes with size 1"}},
    "differentiable": True, "multi_output": False, "category": "reductions",
    "doc": "Sum over axis: sum_i x_i."}

INFO = {
    "version": "0.1.0", "jax_version": "0.10.2", "backend": "cpu",
    "devices": [{"id": 0, "platform": "cpu", "kind": "cpu"}],
    "session_store": "memory", "sessions": 1,
    "limits": {"max_body_bytes": 67108864, "max_nodes": 10000, "max_elements": 50000000,
               "max_sessions": 1000, "session_ttl_seconds": 900.0,
               "session_max_ttl_seconds": 86400.0, "session_max_bytes": 1073741824,
               "total_session_bytes": 8589934592},
    "compile_cache": {"capacity": 512, "entries": 3, "hits": 12, "misses": 3, "compiles": 3},
    "registered_graphs": 1, "api_keys_required": False}

OPTIMIZER = {"name": "sgd", "method": "sgd", "learning_rate": 0.5, "options": {},
             "variables": ["x"], "step": 0}

RESPONSES: dict[tuple[str, str], Any] = {
    ("get", "/v1/health/live"): {"status": "ok"},
    ("get", "/v1/health/ready"): {"status": "ok"},
    ("get", "/v1/info"): INFO,
    ("get", "/v1/ops"): [OP_SUM],
    ("post", "/v1/graphs"): {"graph_id": TUTORIAL_GRAPH_ID, "inputs": ["x"],
                             "outputs": ["z"], "num_nodes": 2},
    ("get", "/v1/graphs/{graph_id}"): {"graph_id": TUTORIAL_GRAPH_ID, "inputs": ["x"],
                                       "outputs": ["z"], "num_nodes": 2,
                                       "graph": TUTORIAL_GRAPH},
    ("post", "/v1/evaluate"): {"values": {"y": Y, "z": Z}},
    ("post", "/v1/gradient"): VALUE_GRADIENT,
    ("post", "/v1/jacobian"): {"value": Y, "jacobian": {"x": ONES}},
    ("post", "/v1/hvp"): {**VALUE_GRADIENT, "hvp": {"x": EIGHTS}},
    ("post", "/v1/hessian"): {**VALUE_GRADIENT, "hessian": {"x": {"x": TWOS}}},
    ("post", "/v1/jvp"): {"values": {"z": Z}, "tangents": {"z": f32(32.0, [])}},
    ("post", "/v1/sessions"): {"session_id": SESSION_ID, "expires_at": EXPIRES_AT,
                               "ttl_seconds": 900.0},
    ("put", "/v1/sessions/{session_id}/tensors/{name}"): tensor_info("x", [2, 2], True),
    ("post", "/v1/sessions/{session_id}/tapes"): {"tape_id": TAPE_ID},
    ("post", "/v1/sessions/{session_id}/tapes/{tape_id}/watch"): tape_info(),
    ("post", "/v1/sessions/{session_id}/run"): {"values": {"y": Y, "z": Z}},
    ("post", "/v1/sessions/{session_id}/tapes/{tape_id}/stop"): tape_info(STOPPED),
    ("post", "/v1/sessions/{session_id}/tapes/{tape_id}/gradient"): {"gradients": {"x": EIGHTS}},
    ("post", "/v1/sessions/{session_id}/tapes/{tape_id}/jacobian"): {
        "value": Y, "jacobian": {"x": ONES}},
    ("post", "/v1/sessions/{session_id}/tapes/{tape_id}/batch_jacobian"): {
        "value": ONES, "jacobian": {"x": IDENTITY_ROWS}},
    ("post", "/v1/sessions/{session_id}/tapes/{tape_id}/hvp"): {
        **VALUE_GRADIENT, "hvp": {"x": EIGHTS}},
    ("post", "/v1/sessions/{session_id}/tapes/{tape_id}/hessian"): {
        **VALUE_GRADIENT, "hessian": {"x": {"x": TWOS}}},
    ("get", "/v1/sessions/{session_id}/tapes/{tape_id}"): TAPE_AFTER_QUERIES,
    ("get", "/v1/sessions/{session_id}"): {
        "session_id": SESSION_ID,
        "tensors": [tensor_info("x", [2, 2], True), tensor_info("y", []),
                    tensor_info("z", [])],
        "tapes": [TAPE_AFTER_QUERIES], "bytes": 2339, "tensor_bytes": 24,
        "ttl_seconds": 900.0, "expires_at": EXPIRES_AT},
    ("get", "/v1/sessions/{session_id}/tensors/{name}"): ONES,
    ("post", "/v1/sessions/{session_id}/tapes/{tape_id}/pause"): tape_info(
        STOPPED, USED, {"paused": True}),
    ("post", "/v1/sessions/{session_id}/tapes/{tape_id}/resume"): TAPE_AFTER_QUERIES,
    ("post", "/v1/sessions/{session_id}/optimizers"): OPTIMIZER,
    ("get", "/v1/sessions/{session_id}/optimizers/{optimizer}"): OPTIMIZER,
    ("post", "/v1/sessions/{session_id}/step"): {"values": {"loss": Z}, "step": 1},
    ("post", "/v1/sessions/{session_id}/optimizers/{optimizer}/apply"): {"step": 2},
    ("post", "/v1/sessions/{session_id}/tapes/{tape_id}/reset"): tape_info(
        STOPPED, {"watched": [], "ops_recorded": 0}),
}
"""The answer of each operation in the tutorial, keyed by (method, path). The answers of
`VARIES` depend on the server (versions, devices, counters, the op table) and show the
form only."""

VARIES = {("get", "/v1/info"), ("get", "/v1/ops")}

SESSION_WALK: list[tuple[str, str]] = [
    ("post", "/v1/sessions"),
    ("put", "/v1/sessions/{session_id}/tensors/{name}"),
    ("post", "/v1/sessions/{session_id}/tapes"),
    ("post", "/v1/sessions/{session_id}/tapes/{tape_id}/watch"),
    ("post", "/v1/sessions/{session_id}/run"),
    ("post", "/v1/sessions/{session_id}/tapes/{tape_id}/stop"),
    ("post", "/v1/sessions/{session_id}/tapes/{tape_id}/gradient"),
    ("post", "/v1/sessions/{session_id}/tapes/{tape_id}/jacobian"),
    ("post", "/v1/sessions/{session_id}/tapes/{tape_id}/batch_jacobian"),
    ("post", "/v1/sessions/{session_id}/tapes/{tape_id}/hvp"),
    ("post", "/v1/sessions/{session_id}/tapes/{tape_id}/hessian"),
    ("get", "/v1/sessions/{session_id}/tapes/{tape_id}"),
    ("get", "/v1/sessions/{session_id}"),
    ("get", "/v1/sessions/{session_id}/tensors/{name}"),
    ("post", "/v1/sessions/{session_id}/optimizers"),
    ("get", "/v1/sessions/{session_id}/optimizers/{optimizer}"),
    ("post", "/v1/sessions/{session_id}/step"),
    ("post", "/v1/sessions/{session_id}/optimizers/{optimizer}/apply"),
    ("delete", "/v1/sessions/{session_id}/optimizers/{optimizer}"),
    ("post", "/v1/sessions/{session_id}/tapes/{tape_id}/pause"),
    ("post", "/v1/sessions/{session_id}/tapes/{tape_id}/resume"),
    ("post", "/v1/sessions/{session_id}/tapes/{tape_id}/reset"),
    ("delete", "/v1/sessions/{session_id}/tapes/{tape_id}"),
    ("delete", "/v1/sessions/{session_id}/tensors/{name}"),
    ("delete", "/v1/sessions/{session_id}"),
]
"""The session routes in the tutorial's order."""
