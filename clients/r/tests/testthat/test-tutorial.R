# The tutorial of the API contract ("The tutorial, as API calls"), with the
# number of requests each part takes.

test_that("part 1: dz/dx of z = (sum x)^2 is 8 everywhere", {
  s <- test_session()
  x <- s$constant(matrix(1, 2, 2))
  with(s$GradientTape() %as% tape, {
    tape$watch(x)
    y <- gt$reduce_sum(x)
    z <- y * y
  })
  g <- tape$gradient(z, x)
  expect_identical(as.array(g), matrix(8, 2, 2))
  expect_identical(g$dtype, "float32")
  expect_identical(g$shape, c(2L, 2L))
  # session, tape, one run (the constant, the watch and both ops), stop, gradient
  expect_equal(s$requests, 5)
})

test_that("part 2: the gradient with respect to the intermediate y is 8", {
  s <- test_session()
  x <- s$constant(matrix(1, 2, 2))
  with(s$GradientTape() %as% tape, {
    tape$watch(x)
    y <- gt$reduce_sum(x)
    z <- y * y
  })
  g <- tape$gradient(z, y)
  expect_identical(as.array(g), 8)
  expect_identical(g$shape, integer(0))
})

test_that("part 3: a persistent tape answers twice", {
  s <- test_session()
  x <- s$constant(3)
  with(s$GradientTape(persistent = TRUE) %as% tape, {
    tape$watch(x)
    y <- x * x
    z <- y * y
  })
  expect_identical(as.array(tape$gradient(z, x)), 108)
  expect_identical(as.array(tape$gradient(y, x)), 6)
  tape$close()
  expect_equal(s$requests, 7)
})

test_that("part 4: control flow in R, the tape records the ops that ran", {
  s <- test_session()
  for (case in list(c(6, 12), c(5, 12), c(4, 4))) {
    x <- s$constant(2)
    output <- s$constant(1)
    with(s$GradientTape() %as% tape, {
      tape$watch(x)
      for (i in seq_len(case[[1]])) {
        if (2 < i && i <= 5) output <- output * x
      }
    })
    expect_identical(as.array(tape$gradient(output, x)), case[[2]])
  }
  # per case: tape, one run, stop, gradient
  expect_equal(s$requests, 1 + 3 * 4)
})

test_that("part 5: a gradient taken inside another tape is differentiated again", {
  s <- test_session()
  x <- s$Variable(1)
  with(s$GradientTape() %as% t, {
    with(s$GradientTape() %as% t2, {
      y <- x * x * x
    })
    dy_dx <- t2$gradient(y, x)
  })
  expect_identical(as.array(dy_dx), 3)
  expect_identical(as.array(t$gradient(dy_dx, x)), 6)
  # session, PUT variable, tape, tape, run, stop, gradient, stop, gradient
  expect_equal(s$requests, 9)
})
