# gt$<op>: one function per op of the server's catalogue, and per alias.
#
# The catalogue ships with the package as inst/ops.json, a copy of the server's
# GET /v1/ops written by tools/update_ops.R; the tests compare it with the live
# server's. An alias with a dot, math.softplus, is also reachable TensorFlow for
# R's way, gt$math$softplus.

gt <- structure(new.env(parent = emptyenv()), class = "gradtape_ops")

ops_catalogue <- function() {
  path <- system.file("ops.json", package = "gradtape", mustWork = TRUE)
  jsonlite::fromJSON(path, simplifyVector = FALSE)
}

# How many results a node of a multi-result op gives: split gives one per
# section, the others (slogdet) two.
count_results <- function(spec, attrs) {
  if (!isTRUE(spec$multi_output)) return(1L)
  sections <- attrs$indices_or_sections
  if (!is.null(sections)) {
    one_count <- length(sections) == 1L && !inherits(sections, "AsIs")
    return(if (one_count) as.integer(sections) else length(sections) + 1L)
  }
  2L
}

# Attribute values as the op's attr types want them: an "int list" is always a
# JSON array, a matrix is a list of its rows, other single values are bare.
encode_attr <- function(value, type) {
  if (is.null(value)) return(NULL)
  if (is.matrix(value)) return(lapply(seq_len(nrow(value)), function(i) I(value[i, ])))
  if (identical(type, "int list") && is.atomic(value)) return(I(value))
  value
}

make_op <- function(spec) {
  name <- spec$name
  attr_names <- names(spec$attrs)
  required <- attr_names[vapply(spec$attrs, function(a) isTRUE(a$required), TRUE)]
  min_args <- spec$min_args
  max_args <- spec$max_args
  function(...) {
    dots <- list(...)
    given <- names(dots) %||% rep("", length(dots))
    args <- dots[given == ""]
    attrs <- dots[given != ""]
    # TensorFlow for R passes the tensors of concat, stack, add_n as one list.
    if (length(args) == 1L && is.list(args[[1L]]) && !inherits(args[[1L]], "gradtape_tensor")) {
      args <- args[[1L]]
    }
    if (length(args) < min_args || (!is.null(max_args) && length(args) > max_args)) {
      wanted <- if (is.null(max_args)) {
        sprintf("at least %d", min_args)
      } else if (min_args == max_args) {
        min_args
      } else {
        sprintf("%d to %d", min_args, max_args)
      }
      stop(sprintf("gt$%s takes %s tensor argument(s), got %d", name, wanted, length(args)),
           call. = FALSE)
    }
    unknown <- setdiff(names(attrs), attr_names)
    if (length(unknown) > 0L) {
      known <- if (length(attr_names) > 0L) paste(attr_names, collapse = ", ") else "none"
      stop(sprintf("gt$%s has no attribute %s; its attributes: %s", name,
                   paste(unknown, collapse = ", "), known), call. = FALSE)
    }
    missing_attrs <- setdiff(required, names(attrs))
    if (length(missing_attrs) > 0L) {
      stop(sprintf("gt$%s needs the attribute(s) %s", name, paste(missing_attrs, collapse = ", ")),
           call. = FALSE)
    }
    results <- count_results(spec, attrs)
    for (key in names(attrs)) attrs[key] <- list(encode_attr(attrs[[key]], spec$attrs[[key]]$type))
    gt_apply(name, args, attrs, results)
  }
}

populate_ops <- function(ops = gt, catalogue = ops_catalogue()) {
  for (spec in catalogue) {
    fn <- make_op(spec)
    for (label in c(spec$name, unlist(spec$aliases))) {
      assign(label, fn, envir = ops)
      parts <- strsplit(label, ".", fixed = TRUE)[[1L]]
      if (length(parts) == 2L) {
        module <- get0(parts[[1L]], envir = ops, inherits = FALSE)
        if (is.null(module)) {
          module <- structure(new.env(parent = emptyenv()), class = "gradtape_ops")
          assign(parts[[1L]], module, envir = ops)
        }
        assign(parts[[2L]], fn, envir = module)
      }
    }
  }
  invisible(ops)
}

`$.gradtape_ops` <- function(x, name) {
  fn <- get0(name, envir = x, inherits = FALSE)
  if (is.null(fn)) {
    stop(sprintf("no op '%s' in the catalogue (gt_ops() lists them)", name), call. = FALSE)
  }
  fn
}

`[[.gradtape_ops` <- function(x, i, ...) `$.gradtape_ops`(x, i)

print.gradtape_ops <- function(x, ...) {
  cat(sprintf("<gradtape ops: %d names; gt_ops() lists them>\n", length(ls(x))))
  invisible(x)
}

gt_ops <- function() {
  catalogue <- ops_catalogue()
  data.frame(
    name = vapply(catalogue, function(op) op$name, ""),
    aliases = vapply(catalogue, function(op) paste(unlist(op$aliases), collapse = ", "), ""),
    arity = vapply(catalogue, function(op) as.character(op$arity), ""),
    attrs = vapply(catalogue, function(op) paste(names(op$attrs), collapse = ", "), ""),
    differentiable = vapply(catalogue, function(op) isTRUE(op$differentiable), TRUE),
    doc = vapply(catalogue, function(op) op$doc, ""),
    stringsAsFactors = FALSE
  )
}

.onLoad <- function(libname, pkgname) {
  populate_ops()
}
