# The gradtape tutorial in R, with httr2 and jsonlite only (no client package):
# every API call written by hand. examples/tutorial.R is the same with the
# gradtape package.
#
# Five parts, each in its own session. Every result is printed as
# "<part> <label> = <data> <dtype> <shape>", e.g. "part3 dz/dx = 108 float32 []".
#
#   GRADTAPE_URL=http://127.0.0.1:8000 Rscript examples/tutorial_httr2.R

library(httr2)

api <- paste0(Sys.getenv("GRADTAPE_URL", "http://127.0.0.1:8000"), "/v1")

# Send one request; on an HTTP error stop with the problem+json body.
# Bodies are R lists: unnamed lists become JSON arrays, named lists objects.
call <- function(method, path, body = NULL) {
  req <- request(paste0(api, path)) |>
    req_method(method) |>
    req_error(is_error = function(resp) FALSE)
  if (!is.null(body)) req <- req_body_json(req, body)
  resp <- req_perform(req)
  if (resp_status(resp) >= 400) {
    stop(sprintf("%s %s -> HTTP %d\n%s", method, path, resp_status(resp),
                 resp_body_string(resp)), call. = FALSE)
  }
  if (resp_status(resp) == 204) invisible(NULL) else resp_body_json(resp, simplifyVector = FALSE)
}

# Run f in a fresh session (given its path, /sessions/{id}); delete it afterwards.
with_session <- function(f) {
  s <- paste0("/sessions/", call("POST", "/sessions", setNames(list(), character(0)))$session_id)
  on.exit(call("DELETE", s))
  f(s)
}

put <- function(s, name, value, variable = FALSE) {
  invisible(call("PUT", paste0(s, "/tensors/", name),
                 list(value = value, variable = variable, trainable = TRUE)))
}

# Start recording; returns the tape's path.
open_tape <- function(s, persistent = FALSE) {
  paste0(s, "/tapes/", call("POST", paste0(s, "/tapes"), list(persistent = persistent))$tape_id)
}

watch <- function(tape, ...) invisible(call("POST", paste0(tape, "/watch"), list(tensors = list(...))))
stop_tape <- function(tape) invisible(call("POST", paste0(tape, "/stop")))
run <- function(s, ...) invisible(call("POST", paste0(s, "/run"), list(nodes = list(...))))
node <- function(id, op, ...) list(id = id, op = op, args = list(...))

# The gradient of target with respect to one source, as a tensor (a list).
gradient <- function(tape, target, source, ...) {
  body <- list(target = target, sources = list(source), ...)
  call("POST", paste0(tape, "/gradient"), body)$gradients[[source]]
}

fmt <- function(v) {
  if (is.list(v)) paste0("[", paste(vapply(v, fmt, ""), collapse = ","), "]") else format(v)
}
show <- function(label, t) cat(sprintf("%s = %s %s %s\n", label, fmt(t$data), t$dtype, fmt(t$shape)))

# x = [[1,1],[1,1]]; watch x; y = reduce_sum(x); z = y * y. Returns the stopped tape.
record_z <- function(s) {
  put(s, "x", matrix(1.0, nrow = 2, ncol = 2))
  tape <- open_tape(s)
  watch(tape, "x")
  run(s, node("y", "reduce_sum", "x"), node("z", "multiply", "y", "y"))
  stop_tape(tape)
  tape
}

main <- function() {
  with_session(function(s) {
    tape <- record_z(s)
    show("part1 dz/dx", gradient(tape, "z", "x"))
  })

  # The same recording; this time the source is the intermediate y.
  with_session(function(s) {
    tape <- record_z(s)
    show("part2 dz/dy", gradient(tape, "z", "y"))
  })

  # A persistent tape answers more than one gradient call.
  with_session(function(s) {
    put(s, "x", 3.0)
    tape <- open_tape(s, persistent = TRUE)
    watch(tape, "x")
    run(s, node("y", "multiply", "x", "x"), node("z", "multiply", "y", "y"))
    stop_tape(tape)
    show("part3 dz/dx", gradient(tape, "z", "x"))
    show("part3 dy/dx", gradient(tape, "y", "x"))
    call("DELETE", tape)
  })

  # Control flow stays in the client: the tape records only the ops that ran.
  for (n in c(6, 5, 4)) {
    with_session(function(s) {
      put(s, "x", 2.0)
      put(s, "output", 1.0)
      tape <- open_tape(s)
      watch(tape, "x")
      for (i in seq_len(n)) {
        if (2 < i && i <= 5) run(s, node("output", "multiply", "output", "x"))
      }
      stop_tape(tape)
      show(sprintf("part4 n=%d doutput/dx", n), gradient(tape, "output", "x"))
    })
  }

  # Higher order: t2's gradient is computed while t records, so t can differentiate it.
  with_session(function(s) {
    put(s, "x", 1.0, variable = TRUE)  # trainable variables are watched automatically
    t <- open_tape(s)
    t2 <- open_tape(s)
    run(s, node("x2", "multiply", "x", "x"), node("y", "multiply", "x2", "x"))
    stop_tape(t2)
    show("part5 dy/dx", gradient(t2, "y", "x", save_as = list(x = "dy_dx")))
    stop_tape(t)
    show("part5 d2y/dx2", gradient(t, "dy_dx", "x"))
  })
}

tryCatch(main(), error = function(e) {
  message("error: ", conditionMessage(e))
  quit(status = 1)
})
