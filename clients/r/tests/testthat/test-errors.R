test_that("an invalid op is a gradtape_error with status, detail and node", {
  s <- test_session()
  a <- s$constant(matrix(1, 2, 3))
  product <- a %*% a  # queued: the error comes when a value is needed
  err <- expect_error(as.array(product), class = "gradtape_invalid_graph")
  expect_s3_class(err, "gradtape_error")
  expect_identical(err$status, 422L)
  expect_identical(err$node, product$name)
  expect_match(err$detail, "matmul")
  expect_match(conditionMessage(err), "422")
  # the failed tensor cannot be used; the session still works
  expect_error(as.array(product + 1), "never computed")
  expect_identical(as.array(a + 1), matrix(2, 2, 3))
})

test_that("an undefined name names the field at fault in loc", {
  s <- test_session()
  ghost <- gradtape:::GradtapeTensor$new(s, "nothing_here", "server")
  err <- expect_error(as.array(ghost * 2), class = "gradtape_error")
  expect_identical(err$status, 422L)
  expect_identical(err$loc, list("body", "nodes", 0L, "args", 0L))
})

test_that("a ragged or unknown value is refused before it is sent", {
  s <- test_session()
  expect_error(s$constant("text"), "numeric or logical")
  expect_error(s$constant(1, dtype = "float16"), "dtype must be one of")
  expect_error(gt$reduce_sum(s$constant(1), axes = 0), "no attribute axes")
  expect_error(gt$add(s$constant(1)), "takes 2 tensor")
  expect_error(gt$no_such_op, "no op 'no_such_op'")
})

test_that("a second gradient of a tape that is not persistent is a 409", {
  s <- test_session()
  x <- s$constant(3)
  with(s$GradientTape() %as% tape, {
    tape$watch(x)
    y <- x * x
  })
  expect_identical(as.array(tape$gradient(y, x)), 6)
  err <- expect_error(tape$gradient(y, x), class = "gradtape_conflict")
  expect_identical(err$status, 409L)
  expect_match(err$detail, "persistent")
})

test_that("requests on a closed session are 404s", {
  s <- test_session()
  x <- s$constant(2)
  y <- x * x
  expect_identical(as.array(y), 4)
  s$close()
  err <- expect_error(s$Variable(1), class = "gradtape_not_found")
  expect_identical(err$status, 404L)
  expect_match(err$detail, "session")
  expect_error(as.array(x * 3), class = "gradtape_not_found")
})

test_that("an unreachable server is a gradtape_connection_error", {
  skip_without_server()
  err <- expect_error(gt_session("http://127.0.0.1:9"), class = "gradtape_connection_error")
  expect_true(is.na(err$status))
})

test_that("a wrong API key or path is reported with its status", {
  skip_without_server()
  err <- expect_error(gt_session(paste0(Sys.getenv("GRADTAPE_URL"), "/nowhere")), class = "gradtape_error")
  expect_identical(err$status, 404L)
})
