# The tests run against a live server named by GRADTAPE_URL (e.g.
# http://127.0.0.1:8000, started with `gradtape serve`); without it, the tests
# that need a server are skipped.
library(testthat)
library(gradtape)

test_check("gradtape")
