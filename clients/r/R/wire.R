# Tensors on the wire (the "Tensors" section of the API contract).
#
# The API lists elements in row-major order; R stores arrays column-major.
# An R array of dim d is sent with shape d and its elements in row-major
# order, so that a 2 x 3 matrix stays a 2 x 3 matrix on the server and back.

# Above this many elements a tensor goes as base64 bytes instead of JSON numbers.
INLINE_MAX_ELEMENTS <- 256L

DTYPES <- c("float32", "float64", "int32", "int64", "bool")

# The dtype an R value gets when none is given: numbers are float32, as bare
# JSON numbers are on the server.
default_dtype <- function(value) {
  if (is.logical(value)) "bool" else if (is.integer(value)) "int32" else "float32"
}

check_dtype <- function(dtype) {
  if (!is.character(dtype) || length(dtype) != 1L || !dtype %in% DTYPES) {
    stop("dtype must be one of ", paste(DTYPES, collapse = ", "), call. = FALSE)
  }
  dtype
}

# The shape of an R value: dim() when it has one, [] for a single value, [n] otherwise.
r_shape <- function(value) {
  d <- dim(value)
  if (!is.null(d)) as.integer(d) else if (length(value) == 1L) integer(0) else length(value)
}

# Elements of an R array in row-major order.
row_major <- function(value, shape) {
  if (length(shape) >= 2L) value <- aperm(array(value, dim = shape), rev(seq_along(shape)))
  as.vector(value)
}

# An R array of the given shape from elements in row-major order.
from_row_major <- function(flat, shape) {
  if (length(shape) == 0L) return(flat[[1L]])
  if (length(shape) == 1L) return(array(flat, dim = shape))
  aperm(array(flat, dim = rev(shape)), rev(seq_along(shape)))
}

# Values as R holds them for a dtype: float32 is rounded to single precision, so
# that what R shows is what the server holds.
as_dtype <- function(x, dtype) {
  switch(dtype,
    float32 = {
      x <- as.double(x)
      readBin(writeBin(x, raw(), size = 4L, endian = "little"), "double",
              n = length(x), size = 4L, endian = "little")
    },
    float64 = as.double(x),
    int32 = {
      if (anyNA(x)) stop("integer tensors cannot hold NA", call. = FALSE)
      as.integer(x)
    },
    int64 = {
      x <- as.double(x)
      if (anyNA(x) || any(x != round(x))) {
        stop("int64 tensors need whole numbers", call. = FALSE)
      }
      x
    },
    bool = {
      if (anyNA(x)) stop("bool tensors cannot hold NA", call. = FALSE)
      as.logical(x)
    }
  )
}

# Shortest decimal text that reads back as the same double.
format_numbers <- function(x) {
  text <- sprintf("%.15g", x)
  inexact <- as.numeric(text) != x
  text[inexact] <- sprintf("%.17g", x[inexact])
  text
}

verbatim <- function(text) structure(text, class = "json")

json_elements <- function(flat, dtype) {
  switch(dtype,
    bool = ifelse(flat, "true", "false"),
    int32 = ,
    int64 = sprintf("%.0f", as.double(flat)),
    format_numbers(flat)
  )
}

b64_bytes <- function(flat, dtype) {
  switch(dtype,
    float32 = writeBin(as.double(flat), raw(), size = 4L, endian = "little"),
    float64 = writeBin(as.double(flat), raw(), size = 8L, endian = "little"),
    int32 = writeBin(as.integer(flat), raw(), size = 4L, endian = "little"),
    int64 = {
      # two little-endian 32-bit words per element, low word first
      high <- floor(flat / 2^32)
      low <- flat - high * 2^32
      low <- ifelse(low >= 2^31, low - 2^32, low)
      words <- as.integer(rbind(low, high))
      writeBin(words, raw(), size = 4L, endian = "little")
    },
    bool = as.raw(as.integer(flat))
  )
}

# A tensor object for a request: {dtype, shape, data} (flat, row-major) for a few
# finite values, {dtype, shape, b64} otherwise. `value` is already as_dtype()'d.
wire_tensor <- function(value, dtype, shape) {
  flat <- row_major(value, shape)
  nonfinite <- is.double(flat) && !all(is.finite(flat))
  if (length(flat) > INLINE_MAX_ELEMENTS || nonfinite) {
    b64 <- gsub("\n", "", jsonlite::base64_enc(b64_bytes(flat, dtype)), fixed = TRUE)
    return(list(dtype = dtype, shape = I(shape), b64 = b64))
  }
  data <- paste0("[", paste(json_elements(flat, dtype), collapse = ","), "]")
  list(dtype = dtype, shape = I(shape), data = verbatim(data))
}

# A bare JSON number or boolean, for a scalar written straight into a node's
# arguments: weakly typed on the server, as a Python scalar is in JAX. A string
# there would name a tensor, so NaN and the infinities are float32 tensors.
wire_scalar <- function(value) {
  if (is.na(value) || is.double(value) && !is.finite(value)) {
    # NA, as R's arithmetic has it, is a NaN on the server
    value <- if (is.na(value)) NaN else value
    return(wire_tensor(value, "float32", integer(0)))
  }
  if (is.logical(value)) verbatim(if (value) "true" else "false") else verbatim(format_numbers(as.double(value)))
}

read_b64 <- function(text, dtype, n) {
  bytes <- jsonlite::base64_dec(text)
  switch(dtype,
    float32 = readBin(bytes, "double", n = n, size = 4L, endian = "little"),
    float64 = readBin(bytes, "double", n = n, size = 8L, endian = "little"),
    int32 = readBin(bytes, "integer", n = n, size = 4L, endian = "little"),
    int64 = {
      words <- matrix(readBin(bytes, "integer", n = 2L * n, size = 4L, endian = "little"), nrow = 2L)
      low <- as.double(words[1L, ])
      low <- ifelse(low < 0, low + 2^32, low)
      low + as.double(words[2L, ]) * 2^32
    },
    bool = as.integer(bytes) != 0L,
    stop("unknown dtype in a response: ", dtype, call. = FALSE)
  )
}

NONFINITE_TEXT <- c("NaN" = NaN, "nan" = NaN, "Infinity" = Inf, "inf" = Inf,
                    "-Infinity" = -Inf, "-inf" = -Inf)

read_data <- function(data, dtype) {
  flat <- unlist(data, recursive = TRUE, use.names = FALSE)
  if (is.null(flat)) flat <- logical(0)
  if (is.character(flat)) {
    known <- flat %in% names(NONFINITE_TEXT)
    numbers <- suppressWarnings(as.numeric(flat))
    numbers[known] <- NONFINITE_TEXT[flat[known]]
    flat <- numbers
  }
  if (dtype == "bool") as.logical(flat) else if (dtype == "int32") as.integer(flat) else as.double(flat)
}

# An R value from a response tensor ({dtype, shape, data} or {dtype, shape, b64}).
# A scalar comes back as a length-one vector, a vector as a 1-d array, the rest as arrays.
decode_tensor <- function(tensor) {
  shape <- as.integer(unlist(tensor$shape))
  n <- prod(shape)
  flat <- if (!is.null(tensor$b64)) {
    read_b64(tensor$b64, tensor$dtype, n)
  } else {
    read_data(tensor$data, tensor$dtype)
  }
  if (length(flat) != n) {
    stop(sprintf("a response tensor of shape [%s] holds %d values",
                 paste(shape, collapse = ","), length(flat)), call. = FALSE)
  }
  from_row_major(flat, shape)
}

tensor_shape <- function(tensor) as.integer(unlist(tensor$shape))

to_json <- function(body) {
  jsonlite::toJSON(body, auto_unbox = TRUE, null = "null", na = "null", digits = NA,
                   json_verbatim = TRUE)
}
