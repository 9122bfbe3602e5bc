# Gradients against closed forms and against central finite differences of the
# server's own forward values (float64 throughout).

x0 <- matrix(c(0.3, -1.2, 0.7, 2.1, -0.4, 1.5), nrow = 2)  # 2 x 3, not symmetric

gradient_of <- function(s, f, x) {
  xt <- s$constant(x, dtype = "float64")
  with(s$GradientTape() %as% tape, {
    tape$watch(xt)
    y <- f(xt)
  })
  tape$gradient(y, xt)
}

cases <- list(
  "sum(sin(x))" = list(f = function(x) gt$reduce_sum(sin(x)), grad = function(x) cos(x)),
  "sum(x^3)" = list(f = function(x) sum(x^3), grad = function(x) 3 * x^2),
  "sum(exp(x) / 2)" = list(f = function(x) gt$sum(exp(x) / 2), grad = function(x) exp(x) / 2),
  "sum(tanh(x) * x)" = list(f = function(x) gt$sum(gt$tanh(x) * x),
                            grad = function(x) tanh(x) + x * (1 - tanh(x)^2)),
  "sum(softplus(x))" = list(f = function(x) gt$math$reduce_sum(gt$math$softplus(x)),
                            grad = function(x) 1 / (1 + exp(-x))),
  "sum(1 / (1 + x^2))" = list(f = function(x) gt$sum(1 / (1 + x^2)),
                              grad = function(x) -2 * x / (1 + x^2)^2),
  "sum(x %*% t(x))" = list(f = function(x) gt$sum(x %*% gt$transpose(x)),
                           grad = function(x) {
                             ones <- matrix(1, nrow(x), nrow(x))
                             2 * ones %*% x
                           }),
  "sum((x - c)^2)" = list(f = function(x) gt$sum(gt$squared_difference(x, matrix(1:6, 2))),
                          grad = function(x) 2 * (x - matrix(1:6, 2)))
)

for (label in names(cases)) {
  case <- cases[[label]]
  test_that(paste("gradient of", label, "matches its closed form"), {
    s <- test_session()
    g <- gradient_of(s, case$f, x0)
    expect_identical(g$dtype, "float64")
    expect_identical(dim(as.array(g)), dim(x0))
    expect_equal(as.array(g), case$grad(x0), tolerance = 1e-10)
  })
}

test_that("gradients match central finite differences of the server's values", {
  s <- test_session()
  f <- function(x) gt$sum(gt$log1p(x * x) * gt$cos(x)) + gt$sum(x %*% gt$transpose(x)) / 3
  forward <- function(x) as.numeric(f(s$constant(x, dtype = "float64")))
  g <- as.array(gradient_of(s, f, x0))
  expect_equal(g, finite_differences(forward, x0), tolerance = 1e-7)
})

test_that("float32 gradients agree with finite differences at float32 precision", {
  s <- test_session()
  x <- c(0.5, -0.25, 1.5)
  xt <- s$constant(x)
  with(s$GradientTape() %as% tape, {
    tape$watch(xt)
    y <- gt$reduce_mean(gt$sigmoid(xt) * xt)
  })
  g <- tape$gradient(y, xt)
  expect_identical(g$dtype, "float32")
  sig <- function(v) 1 / (1 + exp(-v))
  expect_equal(as.numeric(g), (sig(x) + x * sig(x) * (1 - sig(x))) / 3, tolerance = 1e-6)
})
