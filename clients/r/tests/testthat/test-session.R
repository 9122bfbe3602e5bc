test_that("with() closes a session at the end of its block", {
  skip_without_server()
  with(gt_session() %as% s, {
    x <- s$constant(c(1, 2))
    expect_identical(as.numeric(x * x), c(1, 4))
  })
  expect_true(s$closed)
  expect_error(s$Variable(1), class = "gradtape_not_found")
})

test_that("a session prints its id and takes a time to live", {
  skip_without_server()
  s <- gt_session(ttl_seconds = 60)
  withr::defer(s$close())
  expect_output(print(s), s$session_id, fixed = TRUE)
  expect_match(s$session_id, ".")
})

test_that("without lazy batching every op is one request, and errors come at the op", {
  skip_without_server()
  s <- gt_session(lazy = FALSE)
  withr::defer(s$close())
  x <- s$constant(matrix(1, 2, 2))
  with(s$GradientTape() %as% tape, {
    tape$watch(x)
    y <- gt$reduce_sum(x)
    z <- y * y
  })
  expect_identical(as.array(tape$gradient(z, x)), matrix(8, 2, 2))
  # session, tape, run (constant, watch, reduce_sum), run (multiply), stop, gradient
  expect_equal(s$requests, 6)
  a <- s$constant(matrix(1, 2, 3))
  err <- expect_error(a %*% a, class = "gradtape_invalid_graph")
  expect_identical(err$status, 422L)
})

test_that("lazy batching sends a loop of ops as one request", {
  s <- test_session()
  x <- s$constant(1.5)
  before <- s$requests
  total <- x
  for (i in 1:50) total <- total + x
  expect_equal(as.array(total), 1.5 * 51)
  expect_equal(s$requests - before, 1)
})

test_that("tensors of two sessions do not mix", {
  s1 <- test_session()
  s2 <- test_session()
  expect_error(s1$constant(1) + s2$constant(1), "another session")
})
