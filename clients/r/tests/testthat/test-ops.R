test_that("the shipped op table is the live server's catalogue", {
  skip_without_server()
  url <- sub("/+$", "", Sys.getenv("GRADTAPE_URL"))
  req <- httr2::request(paste0(url, "/v1/ops"))
  key <- Sys.getenv("GRADTAPE_API_KEY")
  if (nzchar(key)) req <- httr2::req_headers(req, `X-API-Key` = key)
  live <- jsonlite::fromJSON(httr2::resp_body_string(httr2::req_perform(req)), simplifyVector = FALSE)
  shipped <- gradtape:::ops_catalogue()
  live_names <- vapply(live, function(op) op$name, "")
  shipped_names <- vapply(shipped, function(op) op$name, "")
  expect_identical(setdiff(live_names, shipped_names), character(0),
                   label = "ops of the server missing from inst/ops.json (run tools/update_ops.R)")
  expect_identical(setdiff(shipped_names, live_names), character(0),
                   label = "ops of inst/ops.json the server does not have (run tools/update_ops.R)")
  expect_identical(shipped, live, label = "inst/ops.json (run tools/update_ops.R)")
})

test_that("every op and alias of the catalogue is a function of gt", {
  catalogue <- gradtape:::ops_catalogue()
  expect_gt(length(catalogue), 100)
  for (op in catalogue) {
    for (label in c(op$name, unlist(op$aliases))) {
      expect_true(is.function(gt[[label]]), label = label)
    }
  }
  expect_identical(gt$math$softplus, gt$softplus)
  expect_identical(gt$nn$relu, gt$relu)
  expect_s3_class(gt_ops(), "data.frame")
  expect_identical(nrow(gt_ops()), length(catalogue))
})

test_that("aliases run the same op", {
  s <- test_session()
  x <- s$constant(matrix(c(-1, 0, 1, 2), 2))
  expect_identical(as.array(gt$math.reduce_sum(x)), as.array(gt$sum(x)))
  expect_identical(as.array(gt$nn$relu(x)), matrix(c(0, 0, 1, 2), 2))
  expect_identical(as.array(gt$concat(list(x, x), axis = 1)), cbind(as.array(x), as.array(x)))
  expect_identical(as.array(gt$add_n(x, x, x)), 3 * as.array(x))
})

test_that("ops with several results return a list of tensors", {
  s <- test_session()
  x <- s$constant(matrix(as.double(1:6), nrow = 2, byrow = TRUE), dtype = "float64")
  parts <- gt$split(x, indices_or_sections = 3, axis = 1)
  expect_length(parts, 3L)
  expect_identical(as.array(parts[[2]]), matrix(c(2, 5), 2))
  uneven <- gt$split(x, indices_or_sections = I(c(1)), axis = 1)
  expect_length(uneven, 2L)
  expect_identical(uneven[[2]]$shape, c(2L, 2L))
  sd <- gt$slogdet(s$constant(matrix(c(2, 1, 1, 3), 2), dtype = "float64"))
  expect_length(sd, 2L)
  expect_equal(as.array(sd[[2]]), log(5))
})

test_that("attributes: int lists, pads as matrices, dtype casts", {
  s <- test_session()
  x <- s$constant(matrix(c(1, 2, 3, 4), 2))
  expect_identical(gt$reshape(x, shape = 4)$shape, 4L)
  padded <- gt$pad(x, pad_width = rbind(c(1, 0), c(0, 2)))
  expect_identical(padded$shape, c(3L, 4L))
  expect_identical(as.array(padded)[2:3, 1:2], matrix(c(1, 2, 3, 4), 2))
  expect_identical(gt$cast(x, dtype = "int32")$dtype, "int32")
  expect_identical(as.array(gt$einsum(x, x, subscripts = "ij,jk->ik")), as.array(x %*% x))
})

test_that("conv and max_pool take N, C, W arrays", {
  s <- test_session()
  x <- s$constant(array(as.double(1:5), c(1, 1, 5)))
  w <- s$constant(array(c(1, 0, -1), c(1, 1, 3)))
  expect_identical(as.array(gt$conv(x, w)), array(-2, c(1, 1, 3)))
  expect_identical(as.array(gt$max_pool(x, window = 2)), array(c(2, 4), c(1, 1, 2)))
})
