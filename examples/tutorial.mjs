// The gradtape tutorial in JavaScript: Node 20+, built-in fetch, no packages.
//
// Five parts, each in its own session. Every result is printed as
// "<part> <label> = <data> <dtype> <shape>", e.g. "part3 dz/dx = 108 float32 []".
//
//   GRADTAPE_URL=http://127.0.0.1:8000 node examples/tutorial.mjs

const API = `${process.env.GRADTAPE_URL ?? "http://127.0.0.1:8000"}/v1`;

class HttpError extends Error {}

// Send one request; an HTTP error throws with the problem+json body.
async function call(method, path, body) {
  const init = { method };
  if (body !== undefined) {
    init.headers = { "content-type": "application/json" };
    init.body = JSON.stringify(body);
  }
  const response = await fetch(API + path, init);
  const text = await response.text();
  if (!response.ok) {
    throw new HttpError(`${method} ${path} -> HTTP ${response.status}\n${text}`);
  }
  return response.status === 204 ? null : JSON.parse(text);
}

// Run fn in a fresh session (given its path, /sessions/{id}); delete it afterwards.
async function withSession(fn) {
  const { session_id } = await call("POST", "/sessions", {});
  const s = `/sessions/${session_id}`;
  try {
    await fn(s);
  } finally {
    await call("DELETE", s);
  }
}

const put = (s, name, value, variable = false) =>
  call("PUT", `${s}/tensors/${name}`, { value, variable, trainable: true });

// Start recording; resolves to the tape's path.
async function openTape(s, persistent = false) {
  const { tape_id } = await call("POST", `${s}/tapes`, { persistent });
  return `${s}/tapes/${tape_id}`;
}

const watch = (tape, ...tensors) => call("POST", `${tape}/watch`, { tensors });
const stop = (tape) => call("POST", `${tape}/stop`);
const run = (s, ...nodes) => call("POST", `${s}/run`, { nodes });
const node = (id, op, ...args) => ({ id, op, args });

// The gradient of target with respect to one source, as a tensor object.
async function gradient(tape, target, source, extra = {}) {
  const body = { target, sources: [source], ...extra };
  return (await call("POST", `${tape}/gradient`, body)).gradients[source];
}

const show = (label, t) =>
  console.log(`${label} = ${JSON.stringify(t.data)} ${t.dtype} ${JSON.stringify(t.shape)}`);

// x = [[1,1],[1,1]]; watch x; y = reduce_sum(x); z = y * y. Resolves to the stopped tape.
async function recordZ(s) {
  await put(s, "x", [[1.0, 1.0], [1.0, 1.0]]);
  const tape = await openTape(s);
  await watch(tape, "x");
  await run(s, node("y", "reduce_sum", "x"), node("z", "multiply", "y", "y"));
  await stop(tape);
  return tape;
}

async function main() {
  await withSession(async (s) => {
    const tape = await recordZ(s);
    show("part1 dz/dx", await gradient(tape, "z", "x"));
  });

  // The same recording; this time the source is the intermediate y.
  await withSession(async (s) => {
    const tape = await recordZ(s);
    show("part2 dz/dy", await gradient(tape, "z", "y"));
  });

  // A persistent tape answers more than one gradient call.
  await withSession(async (s) => {
    await put(s, "x", 3.0);
    const tape = await openTape(s, true);
    await watch(tape, "x");
    await run(s, node("y", "multiply", "x", "x"), node("z", "multiply", "y", "y"));
    await stop(tape);
    show("part3 dz/dx", await gradient(tape, "z", "x"));
    show("part3 dy/dx", await gradient(tape, "y", "x"));
    await call("DELETE", tape);
  });

  // Control flow stays in the client: the tape records only the ops that ran.
  for (const n of [6, 5, 4]) {
    await withSession(async (s) => {
      await put(s, "x", 2.0);
      await put(s, "output", 1.0);
      const tape = await openTape(s);
      await watch(tape, "x");
      for (let i = 1; i <= n; i++) {
        if (2 < i && i <= 5) await run(s, node("output", "multiply", "output", "x"));
      }
      await stop(tape);
      show(`part4 n=${n} doutput/dx`, await gradient(tape, "output", "x"));
    });
  }

  // Higher order: t2's gradient is computed while t records, so t can differentiate it.
  await withSession(async (s) => {
    await put(s, "x", 1.0, true); // trainable variables are watched automatically
    const t = await openTape(s);
    const t2 = await openTape(s);
    await run(s, node("x2", "multiply", "x", "x"), node("y", "multiply", "x2", "x"));
    await stop(t2);
    show("part5 dy/dx", await gradient(t2, "y", "x", { save_as: { x: "dy_dx" } }));
    await stop(t);
    show("part5 d2y/dx2", await gradient(t, "dy_dx", "x"));
  });
}

try {
  await main();
} catch (err) {
  if (err instanceof HttpError) console.error(`error: ${err.message}`);
  else if (err.cause) console.error(`error: cannot reach ${API}: ${err.cause.message ?? err.cause}`);
  else throw err;
  process.exit(1);
}
