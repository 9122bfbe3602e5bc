#!/usr/bin/env bash
# The gradtape tutorial with curl (python3 is used only to read JSON).
#
# Five parts, each in its own session. Every result is printed as
# "<part> <label> = <data> <dtype> <shape>", e.g. "part3 dz/dx = 108 float32 []".
#
#   GRADTAPE_URL=http://127.0.0.1:8000 bash examples/tutorial.sh
set -euo pipefail

API="${GRADTAPE_URL:-http://127.0.0.1:8000}/v1"

# call METHOD PATH [JSON]: print the response body; on an HTTP error print the
# problem+json body to stderr and exit 1.
call() {
  local method=$1 path=$2 args=(-sS -X "$1" -w '\n%{http_code}')
  if (($# > 2)); then args+=(-H 'Content-Type: application/json' --data "$3"); fi
  local response status
  response=$(curl "${args[@]}" "$API$path") || {
    echo "error: $method $path: cannot reach $API" >&2
    exit 1
  }
  status=${response##*$'\n'}
  response=${response%$'\n'*}
  if ((status >= 400)); then
    printf 'error: %s %s -> HTTP %s\n%s\n' "$method" "$path" "$status" "$response" >&2
    exit 1
  fi
  printf '%s' "$response"
}

# field KEY: print one field of the JSON object on stdin. (Input is empty when
# call failed; then print nothing and let call's error stand.)
field() {
  python3 -c '
import json, sys
text = sys.stdin.read()
if text:
    print(json.loads(text)[sys.argv[1]])
' "$1"
}

# show LABEL SOURCE: print gradients[SOURCE] of the JSON on stdin as
# "LABEL = data dtype shape".
show() {
  python3 -c '
import json, sys
label, source = sys.argv[1:]
text = sys.stdin.read()
if text:
    t = json.loads(text)["gradients"][source]
    fmt = lambda v: "[" + ",".join(map(fmt, v)) + "]" if isinstance(v, list) else f"{v:g}"
    print(label, "=", fmt(t["data"]), t["dtype"], fmt(t["shape"]))
' "$1" "$2"
}

# x = [[1,1],[1,1]]; watch x; y = reduce_sum(x); z = y * y; stop.
# Sets S (the session path) and TAPE (the tape path).
record_z() {
  S=/sessions/$(call POST /sessions '{}' | field session_id)
  call PUT "$S/tensors/x" '{"value": [[1.0, 1.0], [1.0, 1.0]], "variable": false, "trainable": true}' >/dev/null
  TAPE=$S/tapes/$(call POST "$S/tapes" '{"persistent": false}' | field tape_id)
  call POST "$TAPE/watch" '{"tensors": ["x"]}' >/dev/null
  call POST "$S/run" '{"nodes": [
      {"id": "y", "op": "reduce_sum", "args": ["x"]},
      {"id": "z", "op": "multiply", "args": ["y", "y"]}]}' >/dev/null
  call POST "$TAPE/stop" >/dev/null
}

# Part 1: gradient of z with respect to x.
record_z
call POST "$TAPE/gradient" '{"target": "z", "sources": ["x"]}' | show "part1 dz/dx" x
call DELETE "$S"

# Part 2: the same recording; this time the source is the intermediate y.
record_z
call POST "$TAPE/gradient" '{"target": "z", "sources": ["y"]}' | show "part2 dz/dy" y
call DELETE "$S"

# Part 3: a persistent tape answers more than one gradient call.
S=/sessions/$(call POST /sessions '{}' | field session_id)
call PUT "$S/tensors/x" '{"value": 3.0, "variable": false, "trainable": true}' >/dev/null
TAPE=$S/tapes/$(call POST "$S/tapes" '{"persistent": true}' | field tape_id)
call POST "$TAPE/watch" '{"tensors": ["x"]}' >/dev/null
call POST "$S/run" '{"nodes": [
    {"id": "y", "op": "multiply", "args": ["x", "x"]},
    {"id": "z", "op": "multiply", "args": ["y", "y"]}]}' >/dev/null
call POST "$TAPE/stop" >/dev/null
call POST "$TAPE/gradient" '{"target": "z", "sources": ["x"]}' | show "part3 dz/dx" x
call POST "$TAPE/gradient" '{"target": "y", "sources": ["x"]}' | show "part3 dy/dx" x
call DELETE "$TAPE"
call DELETE "$S"

# Part 4: control flow stays in the client; the tape records only the ops that ran.
for n in 6 5 4; do
  S=/sessions/$(call POST /sessions '{}' | field session_id)
  call PUT "$S/tensors/x" '{"value": 2.0, "variable": false, "trainable": true}' >/dev/null
  call PUT "$S/tensors/output" '{"value": 1.0, "variable": false, "trainable": true}' >/dev/null
  TAPE=$S/tapes/$(call POST "$S/tapes" '{"persistent": false}' | field tape_id)
  call POST "$TAPE/watch" '{"tensors": ["x"]}' >/dev/null
  for ((i = 1; i <= n; i++)); do
    if ((2 < i && i <= 5)); then
      call POST "$S/run" '{"nodes": [{"id": "output", "op": "multiply", "args": ["output", "x"]}]}' >/dev/null
    fi
  done
  call POST "$TAPE/stop" >/dev/null
  call POST "$TAPE/gradient" '{"target": "output", "sources": ["x"]}' | show "part4 n=$n doutput/dx" x
  call DELETE "$S"
done

# Part 5: higher order. t2's gradient is computed while t records, so t can
# differentiate it. A trainable variable is watched automatically.
S=/sessions/$(call POST /sessions '{}' | field session_id)
call PUT "$S/tensors/x" '{"value": 1.0, "variable": true, "trainable": true}' >/dev/null
T=$S/tapes/$(call POST "$S/tapes" '{"persistent": false}' | field tape_id)
T2=$S/tapes/$(call POST "$S/tapes" '{"persistent": false}' | field tape_id)
call POST "$S/run" '{"nodes": [
    {"id": "x2", "op": "multiply", "args": ["x", "x"]},
    {"id": "y", "op": "multiply", "args": ["x2", "x"]}]}' >/dev/null
call POST "$T2/stop" >/dev/null
call POST "$T2/gradient" '{"target": "y", "sources": ["x"], "save_as": {"x": "dy_dx"}}' | show "part5 dy/dx" x
call POST "$T/stop" >/dev/null
call POST "$T/gradient" '{"target": "dy_dx", "sources": ["x"]}' | show "part5 d2y/dx2" x
call DELETE "$S"
