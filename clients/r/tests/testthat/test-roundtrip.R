# Values keep their shape and order between R (column-major) and the API
# (row-major), in JSON and in base64.

test_that("a 2 x 3 matrix round-trips and transposes as in R", {
  s <- test_session()
  m <- matrix(c(1, 2, 3, 4, 5, 6), nrow = 2, byrow = TRUE)  # rows 1 2 3 / 4 5 6
  a <- s$constant(m)
  expect_identical(a$shape, c(2L, 3L))
  expect_identical(as.array(a * 1), m)
  expect_identical(as.array(gt$transpose(a)), t(m))
  expect_identical(as.array(gt$reduce_sum(a, axis = 1)), array(c(6, 15)))
  expect_identical(as.array(gt$reduce_sum(a, axis = 0)), array(c(5, 7, 9)))
  expect_identical(as.array(gt$slice(a, begin = c(0, 1), size = c(2, 2))), m[, 2:3])
  expect_identical(as.array(a %*% matrix(1:3, 3)), m %*% matrix(1:3, 3))
})

test_that("the server sees a row-major layout: reshape agrees with R's byrow", {
  s <- test_session()
  a <- s$constant(1:6, dtype = "float32")
  expect_identical(as.array(gt$reshape(a, shape = c(2, 3))), matrix(1:6 + 0, nrow = 2, byrow = TRUE))
  m <- s$constant(matrix(1:6, nrow = 2))
  expect_identical(as.numeric(gt$ravel(m)), c(1, 3, 5, 2, 4, 6))
})

test_that("3-d arrays keep their dims and elements", {
  s <- test_session()
  x <- array(as.double(1:24), dim = c(2, 3, 4))
  a <- s$constant(x, dtype = "float64")
  expect_identical(as.array(a + 0), x)
  expect_identical(as.array(gt$sum(a, axis = 2)), apply(x, c(1, 2), sum))
  expect_identical(as.array(gt$transpose(a, axes = c(2, 0, 1))), aperm(x, c(3, 1, 2)))
})

test_that("large arrays go as base64 and come back exactly", {
  s <- test_session()
  x <- matrix(seq(-1, 1, length.out = 600) / 3, nrow = 20)
  a <- s$constant(x, dtype = "float64")
  expect_identical(as.array(a * 1), x)
  b <- s$constant(x)  # float32: what comes back is x rounded to single precision
  expect_equal(as.array(b + 0), x, tolerance = 1e-7)
  expect_identical(as.array(b + 0), as.array(b))
})

test_that("float64 values round-trip exactly in JSON", {
  s <- test_session()
  x <- c(0.1, 1 / 3, pi, -2.5e-300, 123456789.123456789)
  expect_identical(as.numeric(s$constant(x, dtype = "float64") * 1), x)
})

test_that("dtypes: int32, int64, bool, and non-finite values", {
  s <- test_session()
  i <- s$constant(matrix(1:6, 2))
  expect_identical(i$dtype, "int32")
  expect_identical(as.array(i + 1L), matrix(2:7, 2))
  big <- s$constant(c(2^40, -3), dtype = "int64")
  expect_identical(as.numeric(big + 1), c(2^40 + 1, -2))
  b <- s$constant(c(TRUE, FALSE, TRUE))
  expect_identical(b$dtype, "bool")
  expect_identical(as.logical(!b), c(FALSE, TRUE, FALSE))
  expect_identical(as.logical(s$constant(c(1, 5)) > 2), c(FALSE, TRUE))
  nf <- s$constant(c(1, NaN, Inf, -Inf))
  expect_identical(as.numeric(nf * 1), c(1, NaN, Inf, -Inf))
  expect_identical(as.numeric(s$constant(c(-1, 0)) / 0), c(-Inf, NaN))
})

test_that("scalars come back as numbers, vectors as 1-d arrays", {
  s <- test_session()
  expect_identical(as.array(s$constant(2) * 3), 6)
  expect_identical(as.array(s$constant(c(1, 2)) * 3), array(c(3, 6)))
  expect_identical(as.numeric(s$constant(c(1, 2)) * 3), c(3, 6))
})

test_that("print() shows name, dtype, shape and value", {
  s <- test_session()
  a <- s$constant(matrix(c(1, 2, 3, 4), 2))
  expect_output(print(a * 2), "float32 \\[2, 2\\]")
  expect_output(print(s$Variable(1)), "variable")
})

test_that("Math and Summary functions run the server's ops", {
  s <- test_session()
  x <- c(0.5, 1, 2)
  a <- s$constant(x, dtype = "float64")
  expect_equal(as.numeric(log(a)), log(x))
  expect_equal(as.numeric(log(a, 2)), log2(x))
  expect_equal(as.numeric(sqrt(a) + abs(-a)), sqrt(x) + x)
  expect_equal(as.numeric(cumsum(a)), cumsum(x))
  expect_equal(as.numeric(sum(a)), sum(x))
  expect_equal(as.numeric(max(a)), 2)
  expect_equal(as.numeric(a %% 0.75), x %% 0.75)
  expect_equal(as.numeric(-a), -x)
})

test_that("NA and infinite scalars in ops are NaN and infinities", {
  s <- test_session()
  x <- s$constant(c(1, 2), dtype = "float64")
  expect_identical(as.numeric(x * NA), c(NaN, NaN))
  expect_identical(as.numeric(x + Inf), c(Inf, Inf))
  expect_identical(as.numeric(x - Inf), c(-Inf, -Inf))
})
