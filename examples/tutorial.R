# The gradtape tutorial in R, with the gradtape package (clients/r).
#
# Five parts, each in its own session. Every result is printed as
# "<part> <label> = <data> <dtype> <shape>", e.g. "part3 dz/dx = 108 float32 []".
# examples/tutorial_httr2.R makes the same API calls by hand.
#
#   R CMD INSTALL clients/r
#   GRADTAPE_URL=http://127.0.0.1:8000 Rscript examples/tutorial.R

library(gradtape)

show <- function(label, t) {
  data <- jsonlite::toJSON(as.array(t), digits = NA, auto_unbox = length(t$shape) == 0)
  shape <- jsonlite::toJSON(t$shape)
  cat(sprintf("%s = %s %s %s\n", label, data, t$dtype, shape))
}

# Run f with a fresh session; close it afterwards.
with_session <- function(f) {
  s <- gt_session()
  on.exit(s$close())
  f(s)
}

# x = [[1,1],[1,1]]; watch x; y = reduce_sum(x); z = y * y.
record_z <- function(s) {
  x <- s$constant(matrix(1, nrow = 2, ncol = 2))
  with(s$GradientTape() %as% tape, {
    tape$watch(x)
    y <- gt$reduce_sum(x)
    z <- y * y
  })
  list(tape = tape, x = x, y = y, z = z)
}

main <- function() {
  with_session(function(s) {
    r <- record_z(s)
    show("part1 dz/dx", r$tape$gradient(r$z, r$x))
  })

  # The same recording; this time the source is the intermediate y.
  with_session(function(s) {
    r <- record_z(s)
    show("part2 dz/dy", r$tape$gradient(r$z, r$y))
  })

  # A persistent tape answers more than one gradient call.
  with_session(function(s) {
    x <- s$constant(3)
    with(s$GradientTape(persistent = TRUE) %as% tape, {
      tape$watch(x)
      y <- x * x
      z <- y * y
    })
    show("part3 dz/dx", tape$gradient(z, x))
    show("part3 dy/dx", tape$gradient(y, x))
    tape$close()
  })

  # Control flow stays in R: the tape records only the ops that ran.
  for (n in c(6, 5, 4)) {
    with_session(function(s) {
      x <- s$constant(2)
      output <- s$constant(1)
      with(s$GradientTape() %as% tape, {
        tape$watch(x)
        for (i in seq_len(n)) {
          if (2 < i && i <= 5) output <- output * x
        }
      })
      show(sprintf("part4 n=%d doutput/dx", n), tape$gradient(output, x))
    })
  }

  # Higher order: t2's gradient is taken while t records, so t can differentiate it.
  with_session(function(s) {
    x <- s$Variable(1)  # trainable variables are watched automatically
    with(s$GradientTape() %as% t, {
      with(s$GradientTape() %as% t2, {
        y <- x * x * x
      })
      dy_dx <- t2$gradient(y, x)
    })
    show("part5 dy/dx", dy_dx)
    show("part5 d2y/dx2", t$gradient(dy_dx, x))
  })
}

tryCatch(main(), error = function(e) {
  message("error: ", conditionMessage(e))
  quit(status = 1)
})
