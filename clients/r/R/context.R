# with(): tapes, stop_recording() and sessions as context managers, as in
# TensorFlow for R: with(s$GradientTape() %as% tape, { ... }).

`%as%` <- function(context, name) {
  name <- substitute(name)
  if (!is.name(name)) {
    stop("%as% takes a name on its right: with(s$GradientTape() %as% tape, ...)", call. = FALSE)
  }
  structure(list(context = context, name = as.character(name)), class = "gradtape_as")
}

# Enter the context, evaluate expr in env, leave the context (also on error).
within_context <- function(context, expr, env) {
  context_enter(context)
  on.exit(context_exit(context))
  eval(expr, env)
}

context_enter <- function(context) UseMethod("context_enter")
context_exit <- function(context) UseMethod("context_exit")

context_enter.default <- function(context) {
  stop("with() takes a gradtape tape, session or stop_recording() here", call. = FALSE)
}
context_exit.default <- function(context) invisible(NULL)

context_enter.gradtape_tape <- function(context) context$.enter()
context_exit.gradtape_tape <- function(context) context$.exit()

context_enter.gradtape_stop_recording <- function(context) context$tape$.pause()
context_exit.gradtape_stop_recording <- function(context) context$tape$.resume()

context_enter.gradtape_session <- function(context) invisible(NULL)
context_exit.gradtape_session <- function(context) context$close()

with.gradtape_as <- function(data, expr, ...) {
  env <- parent.frame()
  assign(data$name, data$context, envir = env)
  within_context(data$context, substitute(expr), env)
}

with.gradtape_tape <- function(data, expr, ...) within_context(data, substitute(expr), parent.frame())

with.gradtape_stop_recording <- function(data, expr, ...) {
  within_context(data, substitute(expr), parent.frame())
}

with.gradtape_session <- function(data, expr, ...) within_context(data, substitute(expr), parent.frame())
