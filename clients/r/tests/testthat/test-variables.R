test_that("assign, assign_add and assign_sub update a variable in place", {
  s <- test_session()
  v <- s$Variable(matrix(c(1, 2, 3, 4, 5, 6), nrow = 2))
  expect_s3_class(v, "gradtape_variable")
  expect_identical(as.array(v), matrix(c(1, 2, 3, 4, 5, 6), nrow = 2))
  v$assign_add(1)
  expect_identical(as.array(v), matrix(c(2, 3, 4, 5, 6, 7), nrow = 2))
  v$assign_sub(matrix(1, 2, 3))
  expect_identical(as.array(v), matrix(c(1, 2, 3, 4, 5, 6), nrow = 2))
  v$assign(matrix(0, 2, 3))
  expect_identical(as.array(v), matrix(0, 2, 3))
})

test_that("ops read a variable's value at their place in the program", {
  s <- test_session()
  v <- s$Variable(2)
  before <- v * 10
  v$assign(5)
  after <- v * 10
  expect_identical(as.array(before), 20)
  expect_identical(as.array(after), 50)
  expect_identical(as.array(v$read_value()), 5)
})

test_that("gradient descent with a tape and assign_sub", {
  s <- test_session()
  w <- s$Variable(c(0, 0), dtype = "float64")
  target <- c(1, -2)
  for (step in 1:60) {
    with(s$GradientTape() %as% tape, {
      loss <- gt$sum((w - target)^2)
    })
    w$assign_sub(0.1 * tape$gradient(loss, w))
  }
  expect_equal(as.numeric(w), target, tolerance = 1e-5)
})

test_that("trainable variables are watched without watch()", {
  s <- test_session()
  v <- s$Variable(4)
  with(s$GradientTape() %as% tape, {
    y <- gt$sqrt(v)
  })
  expect_identical(as.array(tape$gradient(y, v)), 0.25)
})
