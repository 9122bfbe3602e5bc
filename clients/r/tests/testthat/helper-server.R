# Tests that talk to the service need GRADTAPE_URL; without it they are skipped.

skip_without_server <- function() {
  if (!nzchar(Sys.getenv("GRADTAPE_URL"))) {
    skip("GRADTAPE_URL is not set: start a server (gradtape serve) and set GRADTAPE_URL to test against it")
  }
}

# A session closed when the calling test ends.
test_session <- function(env = parent.frame()) {
  skip_without_server()
  s <- gt_session()
  withr::defer(if (!s$closed) s$close(), envir = env)
  s
}

# Central finite differences of a scalar function of a numeric vector or array.
finite_differences <- function(f, x, h = 1e-5) {
  grad <- x
  for (i in seq_along(x)) {
    up <- x
    down <- x
    up[i] <- up[i] + h
    down[i] <- down[i] - h
    grad[i] <- (f(up) - f(down)) / (2 * h)
  }
  grad
}
