# Requests to the service and the errors they raise.

MAX_TRIES <- 3L

# Keys for Idempotency-Key: unique per request, made without touching R's random
# number generator (a user's set.seed() stays reproducible).
idempotency <- new.env(parent = emptyenv())
idempotency$count <- 0
idempotency$prefix <- NULL

next_idempotency_key <- function() {
  if (is.null(idempotency$prefix)) {
    idempotency$prefix <- sprintf("r-%s-%d-%.0f", Sys.info()[["nodename"]], Sys.getpid(),
                                  as.numeric(Sys.time()) * 1e6)
  }
  idempotency$count <- idempotency$count + 1
  substr(sprintf("%s-%.0f", idempotency$prefix, idempotency$count), 1L, 255L)
}

# One request to the API. `path` is under /v1. Mutating requests carry an
# Idempotency-Key, so that a retry after a 503 or a dropped connection is
# answered once. Returns the parsed JSON body (NULL for 204); an HTTP error
# raises a gradtape_error.
api_request <- function(url, api_key, method, path, body = NULL) {
  req <- httr2::request(paste0(url, "/v1", path))
  req <- httr2::req_method(req, method)
  req <- httr2::req_headers(req, Accept = "application/json, application/problem+json")
  if (nzchar(api_key)) req <- httr2::req_headers(req, `X-API-Key` = api_key)
  if (method %in% c("POST", "PUT", "PATCH", "DELETE")) {
    req <- httr2::req_headers(req, `Idempotency-Key` = next_idempotency_key())
  }
  if (!is.null(body)) req <- httr2::req_body_raw(req, to_json(body), type = "application/json")
  req <- httr2::req_error(req, is_error = function(resp) FALSE)
  req <- httr2::req_retry(req, max_tries = MAX_TRIES,
                          is_transient = function(resp) httr2::resp_status(resp) == 503L,
                          backoff = function(tries) 0.25 * 2^tries)
  resp <- tryCatch(httr2::req_perform(req), error = function(e) {
    signal_gradtape_error(
      sprintf("%s %s: cannot reach the service at %s: %s", method, path, url, conditionMessage(e)),
      class = "gradtape_connection_error", status = NA_integer_, detail = conditionMessage(e),
      method = method, path = path
    )
  })
  status <- httr2::resp_status(resp)
  if (status >= 400L) signal_problem(resp, method, path)
  if (status == 204L || length(httr2::resp_body_raw(resp)) == 0L) return(invisible(NULL))
  jsonlite::fromJSON(httr2::resp_body_string(resp, encoding = "UTF-8"), simplifyVector = FALSE)
}

signal_gradtape_error <- function(message, class, status, detail, method, path, type = NA_character_,
                                  title = NA_character_, node = NULL, loc = NULL, errors = list(),
                                  retry_after = NULL, body = NULL) {
  cond <- structure(
    class = c(class, "gradtape_error", "error", "condition"),
    list(message = message, call = NULL, status = status, type = type, title = title,
         detail = detail, node = node, loc = loc, errors = errors, retry_after = retry_after,
         method = method, path = path, body = body)
  )
  stop(cond)
}

# The condition class of a problem type: urn:gradtape:problem:not-found -> gradtape_not_found.
problem_class <- function(type) {
  prefix <- "urn:gradtape:problem:"
  if (!startsWith(type, prefix) || nchar(type) == nchar(prefix)) return(character(0))
  paste0("gradtape_", gsub("[^a-z0-9]+", "_", tolower(substring(type, nchar(prefix) + 1L))))
}

signal_problem <- function(resp, method, path) {
  status <- httr2::resp_status(resp)
  text <- tryCatch(httr2::resp_body_string(resp, encoding = "UTF-8"), error = function(e) "")
  body <- tryCatch(jsonlite::fromJSON(text, simplifyVector = FALSE), error = function(e) NULL)
  if (!is.list(body) || is.null(names(body))) body <- list()
  title <- if (is.character(body$title)) body$title else httr2::resp_status_desc(resp)
  detail <- if (is.character(body$detail)) body$detail else substr(text, 1L, 2000L)
  type <- if (is.character(body$type)) body$type else NA_character_
  errors <- if (is.list(body$errors)) body$errors else list()
  loc <- if (length(errors) > 0L) errors[[1L]]$loc else NULL
  retry_after <- httr2::resp_header(resp, "Retry-After")
  signal_gradtape_error(
    sprintf("%s %s: HTTP %d %s: %s", method, path, status, title %||% "", detail),
    class = if (is.na(type)) character(0) else problem_class(type),
    status = status, detail = detail, method = method, path = path, type = type, title = title,
    node = if (is.character(body$node)) body$node else NULL, loc = loc, errors = errors,
    retry_after = retry_after, body = body
  )
}

`%||%` <- function(x, y) if (is.null(x)) y else x
