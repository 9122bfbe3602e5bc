# Refresh the op table shipped with the package from a running server:
#
#   GRADTAPE_URL=http://127.0.0.1:8000 Rscript tools/update_ops.R
#
# Run from clients/r. Writes inst/ops.json (the server's GET /v1/ops as served)
# and the op list in man/gt.Rd; the tests fail while either differs from the
# live catalogue.

url <- sub("/+$", "", Sys.getenv("GRADTAPE_URL", "http://127.0.0.1:8000"))
req <- httr2::request(paste0(url, "/v1/ops"))
key <- Sys.getenv("GRADTAPE_API_KEY")
if (nzchar(key)) req <- httr2::req_headers(req, `X-API-Key` = key)
text <- httr2::resp_body_string(httr2::req_perform(req), encoding = "UTF-8")
catalogue <- jsonlite::fromJSON(text, simplifyVector = FALSE)

writeLines(jsonlite::prettify(text, indent = 1), "inst/ops.json", useBytes = TRUE)

rd_escape <- function(x) gsub("([%{}\\\\])", "\\\\\\1", x)
items <- vapply(catalogue, function(op) {
  labels <- c(op$name, unlist(op$aliases))
  attrs <- names(op$attrs)
  sprintf("  \\item{\\code{%s}}{%s%s}",
          rd_escape(paste(labels, collapse = ", ")),
          rd_escape(op$doc),
          if (length(attrs) > 0L) rd_escape(paste0(" Attributes: ", paste(attrs, collapse = ", "), ".")) else "")
}, "")

rd <- readLines("man/gt.Rd")
begin <- grep("^% BEGIN OPS", rd)
end <- grep("^% END OPS", rd)
stopifnot(length(begin) == 1L, length(end) == 1L, begin < end)
rd <- c(rd[seq_len(begin)], "\\describe{", items, "}", rd[end:length(rd)])
writeLines(rd, "man/gt.Rd")
cat(sprintf("%d ops written to inst/ops.json and man/gt.Rd\n", length(catalogue)))
