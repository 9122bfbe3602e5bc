# Tensor handles: names of tensors in a session, with R's operators on them.

GradtapeTensor <- R6::R6Class("gradtape_tensor",
  cloneable = FALSE,
  public = list(
    session = NULL,
    name = NULL,
    # "local" (only in R), "input" (queued for upload), "pending" (its op is
    # queued), "server", or "failed" (the request that ran its op failed).
    .state = NULL,
    .value = NULL,
    .dtype = NULL,
    .shape = NULL,

    initialize = function(session, name, state, value = NULL, dtype = NULL, shape = NULL) {
      self$session <- session
      self$name <- name
      self$.state <- state
      self$.value <- value
      self$.dtype <- dtype
      self$.shape <- shape
    },

    numpy = function() self$session$.value_of(self),

    print = function(...) {
      value <- self$numpy()
      cat(sprintf("<gradtape %s '%s': %s [%s]>\n", self$.kind(), self$name, self$.dtype,
                  paste(self$.shape, collapse = ", ")))
      print(value, ...)
      invisible(self)
    },

    .kind = function() "tensor"
  ),
  active = list(
    dtype = function(value) {
      if (!missing(value)) stop("dtype is read-only", call. = FALSE)
      if (is.null(self$.dtype)) self$session$.describe(self)
      self$.dtype
    },
    shape = function(value) {
      if (!missing(value)) stop("shape is read-only", call. = FALSE)
      if (is.null(self$.dtype)) self$session$.describe(self)
      self$.shape
    }
  )
)

GradtapeVariable <- R6::R6Class("gradtape_variable",
  inherit = GradtapeTensor,
  cloneable = FALSE,
  public = list(
    trainable = TRUE,
    assign = function(value) self$session$.queue_assign(self, "assign", value),
    assign_add = function(delta) self$session$.queue_assign(self, "assign_add", delta),
    assign_sub = function(delta) self$session$.queue_assign(self, "assign_sub", delta),
    read_value = function() gt_apply("identity", list(self)),
    .kind = function() "variable"
  )
)

# Run op on tensors and R values; named arguments are the op's attrs.
gt_apply <- function(op, args, attrs = list(), results = 1L) {
  session <- NULL
  for (arg in args) {
    if (inherits(arg, "gradtape_tensor")) {
      session <- arg$session
      break
    }
  }
  if (is.null(session)) {
    stop(sprintf("%s() needs a gradtape tensor among its arguments (%s)", op,
                 "from s$constant(), s$Variable() or an op"), call. = FALSE)
  }
  session$.queue_node(op, args, attrs, results)
}

OPERATORS <- c(
  "+" = "add", "-" = "subtract", "*" = "multiply", "/" = "divide", "^" = "power",
  "%%" = "mod", "%/%" = "floor_divide", "==" = "equal", "!=" = "not_equal", "<" = "less",
  "<=" = "less_equal", ">" = "greater", ">=" = "greater_equal", "&" = "logical_and",
  "|" = "logical_or"
)

Ops.gradtape_tensor <- function(e1, e2) {
  if (missing(e2)) {
    return(switch(.Generic,
      "-" = gt_apply("negative", list(e1)),
      "+" = e1,
      "!" = gt_apply("logical_not", list(e1)),
      stop(sprintf("unary %s is not defined for gradtape tensors", .Generic), call. = FALSE)
    ))
  }
  gt_apply(OPERATORS[[.Generic]], list(e1, e2))
}

`%*%` <- function(x, y) {
  if (inherits(x, "gradtape_tensor") || inherits(y, "gradtape_tensor")) {
    gt_apply("matmul", list(x, y))
  } else {
    base::`%*%`(x, y)
  }
}

MATH_OPS <- c(
  abs = "abs", sign = "sign", sqrt = "sqrt", floor = "floor", ceiling = "ceil",
  exp = "exp", expm1 = "expm1", log1p = "log1p", log2 = "log2", log10 = "log10",
  cos = "cos", sin = "sin", tan = "tan", acos = "arccos", asin = "arcsin", atan = "arctan",
  cosh = "cosh", sinh = "sinh", tanh = "tanh", acosh = "arccosh", asinh = "arcsinh",
  atanh = "arctanh", lgamma = "lgamma", digamma = "digamma", cumsum = "cumsum",
  cumprod = "cumprod"
)

Math.gradtape_tensor <- function(x, ...) {
  extra <- list(...)
  if (.Generic == "log") {
    y <- gt_apply("log", list(x))
    if (length(extra) > 0L) y <- y / log(extra[[1L]])
    return(y)
  }
  if (.Generic == "round") {
    if (length(extra) > 0L && !isTRUE(extra[[1L]] == 0)) {
      stop("round() of a gradtape tensor takes no digits", call. = FALSE)
    }
    return(gt_apply("round", list(x)))
  }
  op <- MATH_OPS[.Generic]
  if (is.na(op)) stop(sprintf("%s() is not defined for gradtape tensors", .Generic), call. = FALSE)
  gt_apply(op[[1L]], list(x))
}

Summary.gradtape_tensor <- function(..., na.rm = FALSE) {
  args <- list(...)
  op <- c(sum = "sum", prod = "prod", max = "max", min = "min", all = "all", any = "any")[.Generic]
  if (is.na(op) || length(args) != 1L) {
    stop(sprintf("%s() of gradtape tensors takes one tensor", .Generic), call. = FALSE)
  }
  gt_apply(op[[1L]], args)
}

as.array.gradtape_tensor <- function(x, ...) x$numpy()

as.double.gradtape_tensor <- function(x, ...) as.double(x$numpy())

as.integer.gradtape_tensor <- function(x, ...) as.integer(x$numpy())

as.logical.gradtape_tensor <- function(x, ...) as.logical(x$numpy())
