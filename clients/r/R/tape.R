# GradientTape, held on the server: it records the ops its session runs while it
# is open, and answers gradients and Jacobians of what it recorded.

GradtapeTape <- R6::R6Class("gradtape_tape",
  cloneable = FALSE,
  public = list(
    session = NULL,
    persistent = FALSE,
    watch_accessed_variables = TRUE,
    tape_id = NULL,
    # "new", "recording", "paused", "stopped" or "deleted"
    .status = "new",
    # shared with the finalizer (which must not hold the tape itself)
    .live = NULL,

    initialize = function(session, persistent, watch_accessed_variables) {
      self$.live <- new.env(parent = emptyenv())
      self$.live$deleted <- FALSE
      self$session <- session
      self$persistent <- persistent
      self$watch_accessed_variables <- watch_accessed_variables
    },

    watch = function(tensor) {
      tensors <- if (inherits(tensor, "gradtape_tensor")) list(tensor) else as.list(tensor)
      for (t in tensors) {
        if (!inherits(t, "gradtape_tensor")) stop("watch() takes gradtape tensors", call. = FALSE)
      }
      self$.started("watch()")
      self$session$.queue_watch(self$tape_id, tensors)
    },

    gradient = function(target, sources, output_gradients = NULL, unconnected_gradients = "none") {
      self$.started("gradient()")
      unconnected_gradients <- match.arg(unconnected_gradients, c("none", "zero"))
      one <- inherits(sources, "gradtape_tensor")
      sources <- check_tensors(if (one) list(sources) else sources, "sources")
      targets <- if (inherits(target, "gradtape_tensor")) list(target) else target
      targets <- check_tensors(targets, "target")
      session <- self$session
      # Saved on the server when a tape records, so that it records this gradient
      # (the server saves the gradient of one target, not of a list).
      save <- session$.recording() && length(targets) == 1L
      target_names <- vapply(targets, session$.ref, "")
      source_names <- vapply(sources, session$.ref, "")
      body <- list(target = if (length(target_names) == 1L) target_names else I(target_names),
                   sources = I(unique(source_names)), unconnected_gradients = unconnected_gradients,
                   encoding = "base64")
      if (!is.null(output_gradients)) {
        body$output_gradients <- output_gradient_values(output_gradients, target_names)
      }
      save_as <- NULL
      if (save) {
        save_as <- lapply(unique(source_names), function(name) session$.new_name("t"))
        names(save_as) <- unique(source_names)
      }
      session$.sync()
      answer <- self$.ask_saving("gradient", body, save_as)
      grads <- answer$answer$gradients
      out <- lapply(source_names, function(name) session$.result(grads[[name]], answer$save_as[[name]]))
      if (one) out[[1L]] else structure(out, names = names(sources))
    },

    jacobian = function(target, sources, unconnected_gradients = "none") {
      self$.query("jacobian", target, sources, unconnected_gradients)
    },

    batch_jacobian = function(target, source, unconnected_gradients = "none") {
      self$.query("batch_jacobian", target, source, unconnected_gradients)
    },

    stop_recording = function() {
      self$.started("stop_recording()")
      structure(list(tape = self), class = "gradtape_stop_recording")
    },

    reset = function() {
      self$.started("reset()")
      self$.post("reset")
      invisible(self)
    },

    watched_variables = function() {
      self$.started("watched_variables()")
      self$session$.sync()
      info <- self$session$.request("GET", self$.path())
      found <- lapply(unlist(info$watched), self$session$.variable)
      Filter(Negate(is.null), found)
    },

    close = function() {
      if (!is.null(self$tape_id) && self$.status != "deleted") {
        self$session$.sync(nodes_only = TRUE)
        self$session$.request("DELETE", self$.path())
        self$session$.drop_tape(self)
        self$.status <- "deleted"
        self$.live$deleted <- TRUE
      }
      invisible(NULL)
    },

    print = function(...) {
      cat(sprintf("<gradtape tape %s: %s%s>\n", self$tape_id %||% "(not started)", self$.status,
                  if (self$persistent) ", persistent" else ""))
      invisible(self)
    },

    # ---- used by with() ------------------------------------------------------

    .enter = function() {
      if (self$.status != "new") {
        stop("this tape has been used in with() already; open a new one", call. = FALSE)
      }
      self$session$.sync(nodes_only = TRUE)
      answer <- self$session$.request("POST", paste0(self$session$.path(), "/tapes"),
                                      list(persistent = self$persistent,
                                           watch_accessed_variables = self$watch_accessed_variables))
      self$tape_id <- answer$tape_id
      self$.status <- "recording"
      self$session$.add_tape(self)
      reg.finalizer(self, release_when_collected(self$session, self$tape_id, self$.live))
    },

    .exit = function() {
      if (self$.status %in% c("recording", "paused")) {
        self$.post("stop")
        self$.status <- "stopped"
        self$session$.drop_tape(self)
      }
    },

    .pause = function() {
      if (self$.status == "recording") {
        self$.post("pause")
        self$.status <- "paused"
      }
    },

    .resume = function() {
      if (self$.status == "paused") {
        self$.post("resume")
        self$.status <- "recording"
      }
    },

    .path = function() paste0(self$session$.path(), "/tapes/", self$tape_id),

    .post = function(action) {
      self$session$.sync(nodes_only = TRUE)
      self$session$.request("POST", paste0(self$.path(), "/", action))
    },

    .started = function(what) {
      if (is.null(self$tape_id)) {
        stop(sprintf("%s needs a started tape: with(s$GradientTape() %%as%% tape, { ... })", what),
             call. = FALSE)
      }
    },

    # POST a gradient with save_as; a source whose gradient is null has nothing to
    # save, so it is asked again without saving that source.
    .ask_saving = function(route, body, save_as) {
      repeat {
        if (length(save_as) > 0L) body$save_as <- save_as else body$save_as <- NULL
        answer <- tryCatch(
          self$session$.request("POST", paste0(self$.path(), "/", route), body),
          gradtape_error = function(e) {
            label <- null_saved_source(e, names(save_as))
            if (is.null(label)) stop(e)
            save_as[[label]] <<- NULL
            NULL
          }
        )
        if (!is.null(answer)) return(list(answer = answer, save_as = save_as))
      }
    },

    .query = function(route, target, sources, unconnected_gradients) {
      self$.started(paste0(route, "()"))
      unconnected_gradients <- match.arg(unconnected_gradients, c("none", "zero"))
      if (!inherits(target, "gradtape_tensor")) {
        stop("target must be one gradtape tensor", call. = FALSE)
      }
      one <- inherits(sources, "gradtape_tensor")
      sources <- check_tensors(if (one) list(sources) else sources, "sources")
      session <- self$session
      target_name <- session$.ref(target)
      source_names <- vapply(sources, session$.ref, "")
      session$.sync()
      body <- list(target = target_name, sources = I(unique(source_names)),
                   unconnected_gradients = unconnected_gradients, encoding = "base64")
      answer <- session$.request("POST", paste0(self$.path(), "/", route), body)
      out <- lapply(source_names, function(name) session$.result(answer$jacobian[[name]]))
      if (one) out[[1L]] else structure(out, names = names(sources))
    }
  )
)

check_tensors <- function(tensors, what) {
  if (!is.list(tensors) || length(tensors) == 0L ||
      !all(vapply(tensors, inherits, TRUE, what = "gradtape_tensor"))) {
    stop(what, " must be a gradtape tensor or a list of them", call. = FALSE)
  }
  tensors
}

# output_gradients: one tensor (one target), or a list with one per target.
output_gradient_values <- function(output_gradients, target_names) {
  as_wire <- function(x) {
    dtype <- if (inherits(x, "gradtape_tensor")) x$dtype else default_dtype(x)
    value <- if (inherits(x, "gradtape_tensor")) x$numpy() else x
    check_value(value)
    shape <- r_shape(value)
    wire_tensor(as_dtype(value, dtype), dtype, shape)
  }
  if (inherits(output_gradients, "gradtape_tensor") || !is.list(output_gradients)) {
    if (length(target_names) != 1L) {
      stop("output_gradients needs one tensor per target (a list)", call. = FALSE)
    }
    return(as_wire(output_gradients))
  }
  if (length(output_gradients) != length(target_names)) {
    stop("output_gradients needs one tensor per target", call. = FALSE)
  }
  structure(lapply(output_gradients, as_wire), names = target_names)
}

# The source named by a "nothing to save" problem (a null gradient with save_as).
null_saved_source <- function(e, labels) {
  if (!identical(e$status, 422L) || is.null(e$loc)) return(NULL)
  loc <- as.character(e$loc)
  at <- match("save_as", loc)
  if (is.na(at) || at == length(loc)) return(NULL)
  label <- loc[[at + 1L]]
  if (label %in% labels) label else NULL
}

# The finalizer of a started tape: when R collects it, its id is queued for deletion
# on the server with the session's next request (unless it was closed, or its session
# was: a session takes its tapes with it).
release_when_collected <- function(session, tape_id, live) {
  force(session)
  force(tape_id)
  force(live)
  function(e) {
    if (!live$deleted && !session$closed) session$.released <- c(session$.released, tape_id)
  }
}
