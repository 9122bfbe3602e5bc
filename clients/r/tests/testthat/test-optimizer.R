# Optimizers held in the session, checked against the update formulas written out in R.

regression <- function() {
  set.seed(7)
  list(X = matrix(rnorm(24), 8, 3), Y = matrix(rnorm(8), 8, 1), w0 = matrix(rnorm(3), 3, 1))
}

mse_grad <- function(X, Y, w) 2 * t(X) %*% (X %*% w - Y) / length(Y)

test_that("minimize applies the tape's gradient on the server, as SGD with momentum does", {
  s <- test_session()
  d <- regression()
  w <- s$Variable(d$w0, dtype = "float64")
  opt <- s$Optimizer("sgd", 0.1, momentum = 0.5)
  x <- s$constant(d$X, dtype = "float64")
  y <- s$constant(d$Y, dtype = "float64")
  expected <- d$w0
  trace <- 0 * d$w0
  for (step in 1:3) {
    with(s$GradientTape() %as% tape, {
      loss <- gt$reduce_mean(gt$square(x %*% w - y))
    })
    before <- s$requests
    expect_identical(opt$minimize(loss, list(w), tape), step)
    # one request: the forward pass ran when the tape's block ended
    expect_identical(s$requests - before, 1)
    # optax's sgd with momentum: trace = g + momentum * trace; w -= lr * trace
    trace <- mse_grad(d$X, d$Y, expected) + 0.5 * trace
    expected <- expected - 0.1 * trace
  }
  expect_equal(as.array(w), expected, tolerance = 1e-10)
  expect_identical(opt$iterations, 3L)
})

test_that("apply_gradients updates with gradients held in R, as Adam's formulas say", {
  s <- test_session()
  d <- regression()
  w <- s$Variable(d$w0, dtype = "float64")
  frozen <- s$Variable(c(1, 2), dtype = "float64")
  opt <- s$Optimizer("adam", 0.01, variables = list(w, frozen))
  m <- v <- 0 * d$w0
  expected <- d$w0
  for (step in 1:3) {
    with(s$GradientTape() %as% tape, {
      loss <- gt$reduce_mean(gt$square(s$constant(d$X, dtype = "float64") %*% w -
                                         s$constant(d$Y, dtype = "float64")))
    })
    g <- tape$gradient(loss, w)
    opt$apply_gradients(list(list(g, w), list(NULL, frozen)))  # NULL: left as it is
    grad <- mse_grad(d$X, d$Y, expected)
    m <- 0.9 * m + 0.1 * grad
    v <- 0.999 * v + 0.001 * grad^2
    expected <- expected - 0.01 * (m / (1 - 0.9^step)) / (sqrt(v / (1 - 0.999^step)) + 1e-8)
  }
  expect_equal(as.array(w), expected, tolerance = 1e-10)
  expect_identical(as.numeric(frozen), c(1, 2))
  expect_output(print(opt), "adam, learning rate 0.01, 3 updates")
})

test_that("optimizer errors say what is wrong", {
  s <- test_session()
  other <- test_session()
  w <- s$Variable(c(1, 2))
  expect_error(s$Optimizer("lbfgs", 0.1), "should be one of")
  err <- expect_error(s$Optimizer("sgd", -1), class = "gradtape_error")
  expect_identical(err$loc, list("body", "learning_rate"))
  opt <- s$Optimizer("sgd", 0.1, variables = list(w))
  expect_error(opt$apply_gradients(list(list(NULL, w))), "grads_and_vars is empty")
  expect_error(opt$apply_gradients(list(list(c(1, 1), other$Variable(c(0, 0))))),
               "variables of this optimizer's session")
  v <- s$Variable(3)
  with(s$GradientTape() %as% tape, {
    loss <- gt$reduce_sum(w * v)
  })
  expect_error(opt$minimize(loss, list(v), tape), "not a variable of optimizer",
               class = "gradtape_error")
  expect_error(opt$minimize(loss, list(w), s$GradientTape()), "needs a started tape")
})

test_that("step runs forward pass, gradient and SGD update in one request, batch by batch", {
  s <- test_session()
  d <- regression()
  w <- s$Variable(d$w0, dtype = "float64")
  opt <- s$Optimizer("sgd", 0.1, variables = list(w))
  loss_fn <- function(w, x, y) gt$reduce_mean(gt$square(x %*% w - y))
  expected <- d$w0
  set.seed(11)
  for (k in 1:3) {
    X <- matrix(rnorm(24), 8, 3)  # a new batch each step, sent with the step
    before <- s$requests
    loss <- opt$step(loss_fn, w, s$constant(X, dtype = "float64"),
                     s$constant(d$Y, dtype = "float64"))
    expect_identical(s$requests - before, 1)  # the batch goes with the step
    expect_equal(loss, mean((X %*% expected - d$Y)^2), tolerance = 1e-12)
    expected <- expected - 0.1 * mse_grad(X, d$Y, expected)
  }
  expect_equal(as.array(w), expected, tolerance = 1e-10)
  expect_identical(opt$iterations, 3L)
})

test_that("step without its loss asks for nothing and updates the same", {
  s <- test_session()
  d <- regression()
  w <- s$Variable(d$w0, dtype = "float64")
  x <- s$constant(d$X, dtype = "float64")
  y <- s$constant(d$Y, dtype = "float64")
  opt <- s$Optimizer("sgd", 0.1, variables = list(w))
  loss_fn <- function() gt$reduce_mean(gt$square(x %*% w - y))
  expect_null(opt$step(loss_fn, return_loss = FALSE))
  expect_null(opt$step(loss_fn, return_loss = FALSE))
  expected <- d$w0
  for (k in 1:2) expected <- expected - 0.1 * mse_grad(d$X, d$Y, expected)
  expect_equal(opt$step(loss_fn), mean((d$X %*% expected - d$Y)^2), tolerance = 1e-12)
  expected <- expected - 0.1 * mse_grad(d$X, d$Y, expected)
  expect_equal(as.array(w), expected, tolerance = 1e-10)
  expect_identical(opt$iterations, 3L)
  expect_error(opt$step(loss_fn, return_loss = NA), "return_loss must be TRUE or FALSE")
})

test_that("step with times runs that many Adam steps on the same tensors", {
  s <- test_session()
  d <- regression()
  w <- s$Variable(d$w0, dtype = "float64")
  x <- s$constant(d$X, dtype = "float64")
  y <- s$constant(d$Y, dtype = "float64")
  opt <- s$Optimizer("adam", 0.05)
  losses <- opt$step(function() gt$reduce_mean(gt$square(x %*% w - y)), times = 4)
  m <- v <- 0 * d$w0
  expected <- d$w0
  want <- numeric(0)
  for (k in 1:4) {
    want <- c(want, mean((d$X %*% expected - d$Y)^2))
    grad <- mse_grad(d$X, d$Y, expected)
    m <- 0.9 * m + 0.1 * grad
    v <- 0.999 * v + 0.001 * grad^2
    expected <- expected - 0.05 * (m / (1 - 0.9^k)) / (sqrt(v / (1 - 0.999^k)) + 1e-8)
  }
  expect_equal(losses, want, tolerance = 1e-10)
  expect_equal(as.array(w), expected, tolerance = 1e-10)
  expect_identical(opt$iterations, 4L)
})

test_that("step errors say what is wrong, and leave the session usable", {
  s <- test_session()
  w <- s$Variable(c(1, 2), dtype = "float64")
  opt <- s$Optimizer("sgd", 0.1, variables = list(w))
  expect_error(opt$step(function() w), "compute the loss it returns")
  expect_error(opt$step(function() 3), "must return a tensor of this optimizer's session")
  expect_error(opt$step(function() as.numeric(w * 2)), "cannot read values")
  expect_error(opt$step(function() gt$reduce_sum(w), times = 0), "times must be")
  expect_error(opt$step(function() { w$assign(c(0, 0)); gt$reduce_sum(w) }),
               "cannot assign to variables")
  err <- expect_error(opt$step(function() w * 2), class = "gradtape_error")  # not a scalar
  expect_match(conditionMessage(err), "scalar")
  inner <- NULL
  loss <- opt$step(function() {
    inner <<- w * w
    gt$reduce_sum(inner)
  })
  expect_equal(loss, 5)
  expect_error(as.array(inner), "made by a step's loss function")
  expect_equal(as.numeric(w), c(1, 2) - 0.1 * 2 * c(1, 2), tolerance = 1e-12)
  expect_equal(as.numeric(w + 1), c(0.8, 1.6) + 1, tolerance = 1e-12)  # still usable
})
