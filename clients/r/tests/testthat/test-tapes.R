test_that("a list of sources gives a list of gradients, with their names", {
  s <- test_session()
  a <- s$constant(2)
  b <- s$constant(c(1, 2, 3))
  with(s$GradientTape() %as% tape, {
    tape$watch(list(a, b))
    y <- gt$sum(a * b * b)
  })
  grads <- tape$gradient(y, list(a = a, b = b))
  expect_named(grads, c("a", "b"))
  expect_identical(as.array(grads$a), 14)
  expect_identical(as.numeric(grads$b), c(4, 8, 12))
})

test_that("unwatched and unconnected sources get NULL, or zeros on request", {
  s <- test_session()
  x <- s$constant(3)
  u <- s$constant(c(1, 2))
  with(s$GradientTape(persistent = TRUE) %as% tape, {
    tape$watch(x)
    y <- x * x
  })
  grads <- tape$gradient(y, list(x, u))
  expect_identical(as.array(grads[[1]]), 6)
  expect_null(grads[[2]])
  zero <- tape$gradient(y, u, unconnected_gradients = "zero")
  expect_identical(as.numeric(zero), c(0, 0))
})

test_that("a persistent tape answers gradients and Jacobians again and again", {
  s <- test_session()
  x <- s$constant(c(1, 2, 3), dtype = "float64")
  with(s$GradientTape(persistent = TRUE) %as% tape, {
    tape$watch(x)
    y <- x * x
    z <- gt$sum(y)
  })
  expect_equal(as.numeric(tape$gradient(z, x)), c(2, 4, 6))
  expect_equal(as.numeric(tape$gradient(y, x)), c(2, 4, 6))
  expect_equal(as.array(tape$jacobian(y, x)), diag(c(2, 4, 6)))
  expect_equal(as.numeric(tape$gradient(z, x)), c(2, 4, 6))
})

test_that("output_gradients weight a non-scalar target; a list of targets adds up", {
  s <- test_session()
  x <- s$constant(c(1, 2))
  with(s$GradientTape(persistent = TRUE) %as% tape, {
    tape$watch(x)
    y <- x * x
    w <- 3 * x
  })
  expect_identical(as.numeric(tape$gradient(y, x, output_gradients = c(1, 10))), c(2, 40))
  expect_identical(as.numeric(tape$gradient(list(y, w), x)), c(5, 7))
})

test_that("jacobian and batch_jacobian have the shapes of TensorFlow's", {
  s <- test_session()
  x <- s$constant(matrix(c(1, 2, 3, 4, 5, 6), nrow = 2), dtype = "float64")
  with(s$GradientTape(persistent = TRUE) %as% tape, {
    tape$watch(x)
    y <- x * x
  })
  j <- tape$jacobian(y, x)
  expect_identical(j$shape, c(2L, 3L, 2L, 3L))
  expect_equal(as.array(j)[2, 3, 2, 3], 12)
  expect_equal(as.array(j)[1, 2, 2, 3], 0)
  b <- tape$batch_jacobian(y, x)
  expect_identical(b$shape, c(2L, 3L, 3L))
  expect_equal(as.array(b)[2, , ], diag(c(4, 8, 12)))
})

test_that("stop_recording() keeps ops off the tape", {
  s <- test_session()
  x <- s$constant(2)
  with(s$GradientTape(persistent = TRUE) %as% tape, {
    tape$watch(x)
    y <- x * x
    with(tape$stop_recording(), {
      unrecorded <- x * x
    })
    z <- y + unrecorded
  })
  expect_identical(as.array(tape$gradient(z, x)), 4)
  expect_null(tape$gradient(unrecorded, x))
})

test_that("reset() forgets what was recorded", {
  s <- test_session()
  x <- s$constant(2)
  with(s$GradientTape() %as% tape, {
    tape$watch(x)
    y <- x * x
    tape$reset()
    tape$watch(x)
    z <- x * 5
  })
  expect_identical(as.array(tape$gradient(z, x)), 5)
})

test_that("the tape stops at the end of with(), also when the block fails", {
  s <- test_session()
  x <- s$constant(1)
  expect_error(with(s$GradientTape() %as% tape, {
    tape$watch(x)
    y <- x * 4
    stop("boom")
  }), "boom")
  expect_identical(tape$.status, "stopped")
  after <- x * x
  expect_identical(as.array(tape$gradient(y, x)), 4)
})

test_that("nested tapes give third derivatives", {
  s <- test_session()
  x <- s$Variable(2, dtype = "float64")
  with(s$GradientTape() %as% t1, {
    with(s$GradientTape() %as% t2, {
      with(s$GradientTape() %as% t3, {
        y <- x^4
      })
      d1 <- t3$gradient(y, x)
    })
    d2 <- t2$gradient(d1, x)
  })
  d3 <- t1$gradient(d2, x)
  expect_equal(as.array(d1), 4 * 2^3)
  expect_equal(as.array(d2), 12 * 2^2)
  expect_equal(as.array(d3), 24 * 2)
})

test_that("a gradient taken outside any recording tape stays usable in ops", {
  s <- test_session()
  x <- s$constant(c(1, 2))
  with(s$GradientTape() %as% tape, {
    tape$watch(x)
    y <- gt$sum(x * x)
  })
  g <- tape$gradient(y, x)
  expect_identical(as.numeric(g * 10 + x), c(21, 42))
})

test_that("watched_variables() lists the variables a tape watches", {
  s <- test_session()
  v <- s$Variable(c(1, 2))
  w <- s$Variable(3, trainable = FALSE)
  with(s$GradientTape() %as% tape, {
    y <- gt$sum(v * w)
  })
  watched <- tape$watched_variables()
  expect_length(watched, 1L)
  expect_identical(watched[[1]]$name, v$name)
  grads <- tape$gradient(y, list(v, w))
  expect_identical(as.numeric(grads[[1]]), c(3, 3))
  expect_null(grads[[2]])
})

test_that("watch_accessed_variables = FALSE watches only what is watched", {
  s <- test_session()
  v <- s$Variable(3)
  with(s$GradientTape(watch_accessed_variables = FALSE) %as% tape, {
    y <- v * v
  })
  expect_null(tape$gradient(y, v))
})

test_that("a tape must be started with with() before it is used", {
  s <- test_session()
  tape <- s$GradientTape()
  expect_error(tape$watch(s$constant(1)), "with\\(")
})

test_that("inside a recording tape, an unconnected source still gets NULL", {
  s <- test_session()
  x <- s$Variable(2)
  u <- s$constant(1)
  with(s$GradientTape() %as% outer, {
    with(s$GradientTape() %as% inner, {
      inner$watch(u)
      y <- x * x
    })
    grads <- inner$gradient(y, list(x, u))
  })
  expect_identical(as.array(grads[[1]]), 4)
  expect_null(grads[[2]])
  expect_identical(as.array(outer$gradient(grads[[1]], x)), 2)
})

test_that("a persistent tape differentiates a gradient taken inside its own block", {
  s <- test_session()
  x <- s$constant(3)
  with(s$GradientTape(persistent = TRUE) %as% tape, {
    tape$watch(x)
    y <- x^3
    dy <- tape$gradient(y, x)
  })
  expect_identical(as.array(dy), 27)
  expect_identical(as.array(tape$gradient(dy, x)), 18)
})

test_that("a tape R no longer holds is deleted on the server with the next request", {
  s <- test_session()
  w <- s$Variable(c(1, 2, 3))
  opt <- s$Optimizer("sgd", 0.25)
  server_tapes <- function() {
    vapply(s$.request("GET", s$.path())$tapes, function(t) t$tape_id, "")
  }
  for (i in 1:8) {
    with(s$GradientTape() %as% tape, {
      loss <- gt$sum((w - 3) * (w - 3))
    })
    opt$minimize(loss, list(w), tape)
  }
  held <- tape$tape_id
  expect_equal(as.numeric(w$numpy()), 3 - c(2, 1, 0) * 0.5^8, tolerance = 1e-6)
  gc()
  left <- server_tapes()
  expect_true(held %in% left)  # still held: kept
  expect_lte(length(left), 2L)
  # a closed tape is not deleted twice, and a held persistent one answers on
  with(s$GradientTape(persistent = TRUE) %as% kept, {
    y <- gt$sum(w * w)
  })
  tape$close()
  rm(tape)
  gc()
  expect_equal(as.numeric(kept$gradient(y, w)), 2 * as.numeric(w$numpy()))
  expect_identical(setdiff(server_tapes(), kept$tape_id), character(0))
  gone <- kept$tape_id
  rm(kept)
  gc()
  expect_false(gone %in% server_tapes())
})
