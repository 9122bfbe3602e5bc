# Optimizers held in the session: optax's update rules run on the server, with
# TensorFlow's optimizer methods. minimize() is one request (the tape's gradient with
# "apply"): the gradients never come back to R.

OPTIMIZER_METHODS <- c("sgd", "adam", "adamw", "rmsprop", "adagrad")

GradtapeOptimizer <- R6::R6Class("gradtape_optimizer",
  cloneable = FALSE,
  public = list(
    session = NULL,
    name = NULL,
    method = NULL,
    learning_rate = NULL,
    # updates applied (TensorFlow's optimizer$iterations)
    iterations = 0L,

    initialize = function(session, method, learning_rate, variables = NULL, options = list()) {
      method <- match.arg(method, OPTIMIZER_METHODS)
      self$session <- session
      self$method <- method
      self$learning_rate <- learning_rate
      self$name <- session$.new_name("opt")
      body <- list(name = self$name, method = method, learning_rate = learning_rate,
                   options = if (length(options) > 0L) options else setNames(list(), character(0)))
      if (!is.null(variables)) {
        body$variables <- I(vapply(check_variables(variables, session, "variables"),
                                   function(v) v$name, ""))
      }
      session$.sync()
      session$.request("POST", paste0(session$.path(), "/optimizers"), body)
    },

    # One update of var_list down the gradient of loss that tape recorded, in one request.
    minimize = function(loss, var_list, tape) {
      tape$.started("minimize()")
      session <- self$session
      variables <- check_variables(var_list, session, "var_list")
      target <- session$.ref(check_tensors(list(loss), "loss")[[1L]])
      session$.sync()
      answer <- session$.request("POST", paste0(tape$.path(), "/gradient"), list(
        target = target, sources = I(vapply(variables, function(v) v$name, "")),
        apply = self$name, encoding = "none"))
      self$.updated(variables, answer)
    },

    # One update with gradients held in R: a list of list(gradient, variable) pairs
    # (TensorFlow's apply_gradients(zip(grads, vars))); a NULL gradient leaves its
    # variable as it is.
    apply_gradients = function(grads_and_vars) {
      pairs <- Filter(function(p) !is.null(p[[1L]]), grads_and_vars)
      variables <- check_variables(lapply(pairs, `[[`, 2L), self$session, "grads_and_vars")
      gradients <- lapply(seq_along(pairs), function(i) {
        g <- pairs[[i]][[1L]]
        v <- variables[[i]]
        g <- if (inherits(g, "gradtape_tensor")) as.array(g) else g
        wire_tensor(as_dtype(g, v$dtype), v$dtype, v$shape)
      })
      names(gradients) <- vapply(variables, function(v) v$name, "")
      self$session$.sync()
      answer <- self$session$.request(
        "POST", paste0(self$session$.path(), "/optimizers/", self$name, "/apply"),
        list(gradients = gradients))
      self$.updated(variables, answer)
    },

    # A whole training step in one request (POST .../step): loss_fn(...) computes the
    # scalar loss from the session's tensors and variables; its ops are sent, not run,
    # and the forward pass, its gradient and this optimizer's update run on the server as
    # one compiled function. Constants only R holds (a new batch each step) go with the
    # step and stay bound. `times` runs that many steps on the same tensors. Returns the
    # loss before the update (a vector of `times` losses). With return_loss = FALSE (and one
    # step) it asks for nothing back and returns NULL: the server answers once the step is
    # under way and computes it while R prepares the next one.
    step = function(loss_fn, ..., times = 1L, return_loss = TRUE) {
      if (!is.function(loss_fn)) stop("step takes the loss function first", call. = FALSE)
      if (!is.numeric(times) || length(times) != 1L || is.na(times) || times != round(times) ||
          times < 1 || times > 10000) {
        stop("times must be a whole number of steps between 1 and 10000", call. = FALSE)
      }
      session <- self$session
      captured <- session$.capture(function() loss_fn(...))
      loss <- captured$result
      queue <- captured$queue
      made <- vapply(queue$handles, function(h) identical(h, loss), TRUE)
      fail <- function(message) {
        forget_queue(queue)
        stop(message, call. = FALSE)
      }
      if (!inherits(loss, "gradtape_tensor") || !identical(loss$session, session)) {
        fail("loss_fn must return a tensor of this optimizer's session: the scalar loss")
      }
      if (!any(made)) {
        fail("loss_fn must compute the loss it returns from tensors and variables (with ops)")
      }
      if (any(vapply(queue$handles, function(h) inherits(h, "gradtape_variable"), TRUE))) {
        fail("a step's loss function cannot assign to variables: the optimizer updates them")
      }
      if (!isTRUE(return_loss) && !isFALSE(return_loss)) {
        fail("return_loss must be TRUE or FALSE")
      }
      quiet <- !return_loss && times == 1
      body <- list(nodes = queue$nodes, target = loss$name, optimizer = self$name,
                   fetch = if (quiet) I(character(0)) else I(loss$name),
                   `repeat` = as.integer(times), encoding = "base64")
      if (length(queue$inputs) > 0L) body$inputs <- queue$inputs
      done <- FALSE
      on.exit(if (!done) forget_queue(queue))
      answer <- session$.request("POST", paste0(session$.path(), "/step"), body)
      done <- TRUE
      for (tensor in queue$uploads) tensor$.state <- "server"
      for (tensor in queue$handles) tensor$.state <- "step"
      session$.variables_changed()
      self$iterations <- as.integer(answer$step)
      if (!return_loss) return(invisible(NULL))
      if (times > 1) as.numeric(unlist(answer$losses)) else
        as.numeric(decode_tensor(answer$values[[loss$name]]))
    },

    print = function(...) {
      cat(sprintf("<gradtape optimizer %s: %s, learning rate %s, %d updates>\n", self$name,
                  self$method, format(self$learning_rate), self$iterations))
      invisible(self)
    },

    # The variables changed on the server: their values are fetched again when read.
    .updated = function(variables, answer) {
      for (v in variables) v$.value <- NULL
      self$iterations <- as.integer(answer$step)
      invisible(self$iterations)
    }
  )
)

check_variables <- function(variables, session, field) {
  if (inherits(variables, "gradtape_tensor")) variables <- list(variables)
  if (length(variables) == 0L) {
    stop(sprintf("%s is empty: name the variables to update", field), call. = FALSE)
  }
  for (v in variables) {
    if (!inherits(v, "gradtape_variable") || !identical(v$session, session)) {
      stop(sprintf("%s takes variables of this optimizer's session", field), call. = FALSE)
    }
  }
  variables
}
