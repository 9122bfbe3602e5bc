# Sessions: a workspace of named tensors and tapes held on the server.
#
# Ops are not sent one by one. The session queues them (with the constants they
# use and the tensors tapes are asked to watch) and sends the queue as one
# `POST .../run` when it has to: a value is asked for, or a request that depends
# on what ran (a tape starting or stopping, a gradient) is about to be made.

gt_session <- function(url = Sys.getenv("GRADTAPE_URL", "http://127.0.0.1:8000"),
                       api_key = Sys.getenv("GRADTAPE_API_KEY"), ttl_seconds = NULL,
                       lazy = TRUE) {
  if (!is.character(url) || length(url) != 1L || !nzchar(url)) {
    stop("url must be the server's address, e.g. \"http://127.0.0.1:8000\"", call. = FALSE)
  }
  GradtapeSession$new(url, api_key, ttl_seconds, lazy)
}

# Most nodes one run request may hold (the server's default max_nodes).
MAX_RUN_NODES <- 10000L

new_queue <- function() {
  queue <- new.env(parent = emptyenv())
  queue$nodes <- list()
  queue$handles <- list()  # tensors the queued nodes will bind
  queue$inputs <- list()   # name -> tensor object, bound before the nodes run
  queue$uploads <- list()  # the tensors those inputs belong to
  queue$watch <- list()    # tape id -> names, watched after the inputs are bound
  queue
}

GradtapeSession <- R6::R6Class("gradtape_session",
  cloneable = FALSE,
  public = list(
    url = NULL,
    session_id = NULL,
    requests = 0,
    closed = FALSE,

    initialize = function(url, api_key, ttl_seconds = NULL, lazy = TRUE) {
      self$url <- sub("/+$", "", url)
      private$lazy <- isTRUE(lazy)
      private$api_key <- if (is.null(api_key) || is.na(api_key)) "" else api_key
      private$queue <- new_queue()
      private$tapes <- new.env(parent = emptyenv())
      private$variables <- new.env(parent = emptyenv())
      body <- if (is.null(ttl_seconds)) {
        structure(list(), names = character(0))  # {}
      } else {
        list(ttl_seconds = ttl_seconds)
      }
      self$session_id <- self$.request("POST", "/sessions", body)$session_id
    },

    constant = function(value, dtype = NULL) {
      if (inherits(value, "gradtape_tensor")) {
        dtype <- dtype %||% value$dtype
        value <- value$numpy()
      }
      local_tensor(self, value, dtype)
    },

    Variable = function(value, trainable = TRUE, dtype = NULL) {
      if (inherits(value, "gradtape_tensor")) {
        dtype <- dtype %||% value$dtype
        value <- value$numpy()
      }
      check_value(value)
      dtype <- check_dtype(dtype %||% default_dtype(value))
      shape <- r_shape(value)
      value <- as_dtype(value, dtype)
      name <- self$.new_name("v")
      self$.request("PUT", paste0(self$.path(), "/tensors/", name),
                    list(value = wire_tensor(value, dtype, shape), variable = TRUE,
                         trainable = isTRUE(trainable)))
      value <- from_row_major(row_major(value, shape), shape)
      variable <- GradtapeVariable$new(self, name, "server", value, dtype, shape)
      variable$trainable <- isTRUE(trainable)
      assign(name, variable, envir = private$variables)
      variable
    },

    GradientTape = function(persistent = FALSE, watch_accessed_variables = TRUE) {
      GradtapeTape$new(self, isTRUE(persistent), isTRUE(watch_accessed_variables))
    },

    # An optimizer held in the session: optax's method ("sgd", "adam", "adamw",
    # "rmsprop", "adagrad") with its options (momentum =, b1 =, weight_decay =, ...),
    # over `variables` (default: the session's trainable variables now).
    Optimizer = function(method, learning_rate, variables = NULL, ...) {
      GradtapeOptimizer$new(self, method, learning_rate, variables, list(...))
    },

    close = function() {
      if (!self$closed) {
        private$queue <- new_queue()
        self$closed <- TRUE
        self$.request("DELETE", self$.path())
      }
      invisible(NULL)
    },

    print = function(...) {
      cat(sprintf("<gradtape session %s at %s%s>\n", self$session_id, self$url,
                  if (self$closed) " (closed)" else ""))
      invisible(self)
    },

    # ---- used by tensors and tapes -------------------------------------------

    .request = function(method, path, body = NULL) {
      self$.release_dropped()
      self$requests <- self$requests + 1
      api_request(self$url, private$api_key, method, path, body)
    },

    # Tapes whose R objects were garbage collected (their finalizers queue their ids
    # here: R may collect in the middle of a request) are deleted on the server before
    # the next request, as TensorFlow frees a tape it no longer holds.
    .released = character(0),
    .release_dropped = function() {
      while (length(self$.released) > 0L && !self$closed) {
        tape_id <- self$.released[[1L]]
        self$.released <- self$.released[-1L]
        self$requests <- self$requests + 1
        tryCatch(api_request(self$url, private$api_key, "DELETE",
                             paste0(self$.path(), "/tapes/", tape_id)),
                 gradtape_not_found = function(e) NULL)  # deleted by other means already
      }
    },

    .path = function() paste0("/sessions/", self$session_id),

    .new_name = function(prefix = "t") {
      private$counter <- private$counter + 1
      sprintf("%s%.0f", prefix, private$counter)
    },

    # A node argument: the name of a tensor of this session (queued for upload when
    # it is still only in R), or an R value written into the node as a constant.
    .ref = function(x) {
      if (!inherits(x, "gradtape_tensor")) return(inline_constant(x))
      if (!identical(x$session, self)) {
        stop("a tensor of another session cannot be used here", call. = FALSE)
      }
      if (x$.state == "local") {
        private$queue$inputs[[x$name]] <- wire_tensor(x$.value, x$.dtype, x$.shape)
        private$queue$uploads[[length(private$queue$uploads) + 1L]] <- x
        x$.state <- "input"
      } else if (x$.state == "failed") {
        stop(sprintf("tensor '%s' was never computed: the request that ran its op failed", x$name),
             call. = FALSE)
      } else if (x$.state == "step") {
        stop(sprintf("tensor '%s' was made by a step's loss function: a step keeps none of %s",
                     x$name, "its results but the loss it returns"), call. = FALSE)
      }
      x$name
    },

    # The ops f() queues, captured instead of run (a training step's forward pass):
    # list(result = what f returned, queue = its nodes, the constants they read and the
    # handles they made). What was queued before is sent first.
    .capture = function(f) {
      self$.sync()
      private$queue <- new_queue()
      private$capturing <- TRUE
      done <- FALSE
      on.exit({
        private$capturing <- FALSE
        if (!done) {
          forget_queue(private$queue)
          private$queue <- new_queue()
        }
      })
      result <- f()
      captured <- private$queue
      private$queue <- new_queue()
      done <- TRUE
      list(result = result, queue = captured)
    },

    # Variables changed on the server (by a step): their values are fetched again when read.
    .variables_changed = function() {
      for (variable in as.list(private$variables)) variable$.value <- NULL
      invisible(NULL)
    },

    .queue_node = function(op, args, attrs, results = 1L) {
      ids <- vapply(seq_len(results), function(i) self$.new_name("t"), "")
      node <- list(id = if (results == 1L) ids else I(ids), op = op,
                   args = unname(lapply(args, self$.ref)))
      if (length(attrs) > 0L) node$attrs <- attrs
      queue <- private$queue
      handles <- lapply(ids, function(id) GradtapeTensor$new(self, id, "pending"))
      queue$nodes[[length(queue$nodes) + 1L]] <- node
      queue$handles <- c(queue$handles, handles)
      if (!private$lazy && !private$capturing) self$.flush()
      if (results == 1L) handles[[1L]] else handles
    },

    # assign, assign_add, assign_sub: the node rebinds the variable's own name.
    .queue_assign = function(variable, op, value) {
      node <- list(id = variable$name, op = op, args = list(variable$name, self$.ref(value)))
      queue <- private$queue
      queue$nodes[[length(queue$nodes) + 1L]] <- node
      variable$.value <- NULL
      variable$.state <- "pending"
      queue$handles[[length(queue$handles) + 1L]] <- variable
      if (!private$lazy && !private$capturing) self$.flush()
      invisible(variable)
    },

    # Watches go with the next run, applied before its nodes; so ops already queued
    # are sent first (a tensor watched after an op is not watched by that op).
    .queue_watch = function(tape_id, tensors) {
      if (length(private$queue$nodes) > 0L) self$.flush()
      names <- vapply(tensors, self$.ref, "")
      private$queue$watch[[tape_id]] <- unique(c(private$queue$watch[[tape_id]], names))
      invisible(NULL)
    },

    # Send what is queued. With nodes_only, constants waiting for upload may wait
    # longer (opening a tape does not change what a constant is).
    .sync = function(nodes_only = FALSE) {
      queue <- private$queue
      busy <- length(queue$nodes) > 0L || length(queue$watch) > 0L
      if (busy || (!nodes_only && length(queue$inputs) > 0L)) self$.flush()
      invisible(NULL)
    },

    # POST .../run with the queue. `fetch`: a name whose value is wanted.
    .flush = function(fetch = NULL) {
      if (private$capturing) {
        stop("a step's loss function is sent to the server whole: it cannot read values, ",
             "watch tensors or use tapes; compute the loss from tensors and variables only",
             call. = FALSE)
      }
      queue <- private$queue
      private$queue <- new_queue()
      chunks <- split(seq_along(queue$nodes), (seq_along(queue$nodes) - 1L) %/% MAX_RUN_NODES)
      if (length(chunks) == 0L) chunks <- list(integer(0))
      done <- FALSE
      on.exit(if (!done) forget_queue(queue))
      values <- list()
      for (i in seq_along(chunks)) {
        nodes <- queue$nodes[chunks[[i]]]
        body <- list()
        if (length(nodes) > 0L) body$nodes <- nodes
        if (i == 1L && length(queue$inputs) > 0L) body$inputs <- queue$inputs
        if (i == 1L && length(queue$watch) > 0L) body$watch <- lapply(queue$watch, I)
        last <- i == length(chunks)
        if (last && !is.null(fetch)) {
          body$fetch <- I(fetch)
          body$encoding <- "base64"
        } else {
          ids <- unlist(lapply(nodes, function(node) unclass(node$id)))
          body$fetch <- I(unique(ids) %||% character(0))
          body$encoding <- "none"
        }
        answer <- self$.request("POST", paste0(self$.path(), "/run"), body)
        values <- c(values, answer$values)
      }
      done <- TRUE
      for (tensor in queue$uploads) tensor$.state <- "server"
      for (tensor in queue$handles) {
        tensor$.state <- "server"
        meta <- values[[tensor$name]]
        if (!is.null(meta)) {
          tensor$.dtype <- meta$dtype
          tensor$.shape <- tensor_shape(meta)
        }
      }
      if (!is.null(fetch)) values[[fetch]] else NULL
    },

    # The value of a tensor of this session, as an R array.
    .value_of = function(tensor) {
      if (!is.null(tensor$.value)) return(tensor$.value)
      if (tensor$.state %in% c("failed", "step")) self$.ref(tensor)
      queue <- private$queue
      pending <- length(queue$nodes) + length(queue$inputs) + length(queue$watch) > 0L
      answer <- if (pending) {
        self$.flush(fetch = tensor$name)
      } else {
        self$.request("GET", paste0(self$.path(), "/tensors/", tensor$name, "?encoding=base64"))
      }
      tensor$.dtype <- answer$dtype
      tensor$.shape <- tensor_shape(answer)
      tensor$.value <- decode_tensor(answer)
      tensor$.value
    },

    # dtype and shape of a tensor whose op was queued.
    .describe = function(tensor) {
      if (tensor$.state %in% c("failed", "step")) self$.ref(tensor)
      self$.sync()
      if (is.null(tensor$.dtype)) {
        answer <- self$.request("GET", paste0(self$.path(), "/tensors/", tensor$name, "?encoding=none"))
        tensor$.dtype <- answer$dtype
        tensor$.shape <- tensor_shape(answer)
      }
      invisible(tensor)
    },

    .add_tape = function(tape) assign(tape$tape_id, tape, envir = private$tapes),
    .drop_tape = function(tape) {
      if (exists(tape$tape_id, envir = private$tapes, inherits = FALSE)) {
        rm(list = tape$tape_id, envir = private$tapes)
      }
    },

    # Whether some tape of this session records now (gradients are then saved on
    # the server, so that the recording tape can differentiate them again).
    .recording = function() {
      any(vapply(as.list(private$tapes), function(tape) tape$.status == "recording", TRUE))
    },

    .variable = function(name) get0(name, envir = private$variables, inherits = FALSE),

    # A tensor computed by a query (gradient, Jacobian) whose value came back:
    # saved on the server under `saved`, or only in R until an op uses it.
    .result = function(answer, saved = NULL) {
      if (is.null(answer)) return(NULL)
      value <- decode_tensor(answer)
      if (is.null(saved)) {
        GradtapeTensor$new(self, self$.new_name("t"), "local", value, answer$dtype, tensor_shape(answer))
      } else {
        GradtapeTensor$new(self, saved, "server", value, answer$dtype, tensor_shape(answer))
      }
    }
  ),
  private = list(
    api_key = "",
    lazy = TRUE,
    capturing = FALSE,
    counter = 0,
    queue = NULL,
    tapes = NULL,
    variables = NULL
  )
)

# After a failed run: the tensors its nodes were to bind are marked failed; the
# constants it was to upload stay in R and go with a later request.
forget_queue <- function(queue) {
  for (tensor in queue$handles) {
    if (inherits(tensor, "gradtape_variable")) tensor$.state <- "server" else tensor$.state <- "failed"
  }
  for (tensor in queue$uploads) tensor$.state <- "local"
}

check_value <- function(value) {
  if (!(is.numeric(value) || is.logical(value)) || is.object(value) && !is.array(value)) {
    stop("a tensor's value must be a numeric or logical vector, matrix or array", call. = FALSE)
  }
  invisible(value)
}

local_tensor <- function(session, value, dtype = NULL) {
  check_value(value)
  dtype <- check_dtype(dtype %||% default_dtype(value))
  shape <- r_shape(value)
  value <- as_dtype(value, dtype)
  value <- from_row_major(row_major(value, shape), shape)
  GradtapeTensor$new(session, session$.new_name("c"), "local", value, dtype, shape)
}

# An R value in a node's arguments: a single number or boolean is written bare
# (weakly typed, keeping the dtype of the tensor it meets); anything else is a
# tensor object with the default dtype.
inline_constant <- function(x) {
  check_value(x)
  if (length(x) == 1L && is.null(dim(x))) return(wire_scalar(x))
  dtype <- default_dtype(x)
  shape <- r_shape(x)
  wire_tensor(as_dtype(x, dtype), dtype, shape)
}
