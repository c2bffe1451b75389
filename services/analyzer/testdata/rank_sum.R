# Reference values for the judge's rank-sum test, from R's own wilcox.test with the options the
# judge uses. Regenerate with: Rscript rank_sum.R > rank_sum.tsv
set.seed(20261126)
cases <- list(
  tiny_1_vs_2 = list(c(1.5), c(0.5, 2.5)),
  tiny_2_vs_2 = list(c(3, 4), c(1, 2)),
  ties = list(c(1, 2, 2, 3, 3, 3, 4), c(2, 2, 3, 4, 4, 5, 5, 6)),
  zeros = list(c(0, 0, 0, 0.1, 0.2, 0), c(0, 0, 0, 0, 0.05, 0)),
  mostly_zero_errors = list(c(0, 0, 1, 0, 2, 0, 0, 3, 0, 1), c(0, 0, 0, 0, 0, 0, 0, 0, 1, 0)),
  negative = list(c(-3.2, -1.1, 0.4, -2.2, -0.9), c(-0.5, 0.3, 1.2, 0.8, 0.1, 2.2)),
  shifted_normal = list(rnorm(40, 105, 10), rnorm(50, 100, 10)),
  same_distribution = list(rnorm(60, 250, 30), rnorm(60, 250, 30)),
  latency_regression = list(rexp(80, 1 / 300) + 50, rexp(80, 1 / 200) + 50),
  integers_many_ties = list(rpois(100, 3), rpois(100, 4)),
  unequal_sizes = list(runif(7, 0, 1), runif(93, 0.2, 1.2)),
  one_outlier = list(c(10, 11, 10.5, 9.8, 10.2, 250), c(10.1, 10.4, 9.9, 10.3, 10, 10.2)),
  all_x_above = list(c(100, 101, 102), c(1, 2, 3, 4))
)
fmt <- function(v) paste(sprintf("%.17g", v), collapse = ",")
cat("name\tx\ty\tW\tp\testimate\tci_lower\tci_upper\n")
for (name in names(cases)) {
  x <- cases[[name]][[1]]
  y <- cases[[name]][[2]]
  t <- suppressWarnings(wilcox.test(x, y, conf.int = TRUE, conf.level = 0.98, exact = FALSE, correct = TRUE))
  cat(name, fmt(x), fmt(y), fmt(t$statistic), fmt(t$p.value), fmt(t$estimate), fmt(t$conf.int[1]), fmt(t$conf.int[2]), sep = "\t")
  cat("\n")
}
