# The R example of the API contract (docs/API.md, section "Clients"), as written
# there but for the server's address; tests/test_client_r.py checks that this
# copy matches the one in API.md.

API_EXAMPLE <- '
library(gradtape)
s <- gt_session("http://127.0.0.1:8000")
x <- s$constant(matrix(1, 2, 2))
with(s$GradientTape() %as% t, {
  t$watch(x)
  y <- gt$reduce_sum(x)
  z <- y * y
})
as.array(t$gradient(z, x))                            # 8 8 / 8 8
s$close()
'

test_that("the API.md example runs as written and gives 8 8 / 8 8", {
  skip_without_server()
  code <- gsub("http://127.0.0.1:8000", Sys.getenv("GRADTAPE_URL"), API_EXAMPLE, fixed = TRUE)
  env <- new.env(parent = globalenv())
  exprs <- parse(text = code)
  for (e in exprs[-length(exprs)]) result <- withVisible(eval(e, env))
  expect_identical(result$value, matrix(8, 2, 2))
  eval(exprs[[length(exprs)]], env)
  expect_true(env$s$closed)
  expect_s3_class(env$t, "gradtape_tape")
})
