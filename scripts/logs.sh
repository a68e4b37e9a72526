# Shell helpers for todeviced's logs, sourced by load-run.sh and
# crash-soak.sh (and checked by scripts/logs_test.go).

# count_log_errors FILE prints how many lines of FILE todeviced logged at
# level ERROR, in either log format: JSON ("level":"ERROR", what it writes
# when standard error is not a terminal, as in these scripts) or text
# (level=ERROR).
count_log_errors() {
	grep -cE '"level":"ERROR"|(^|[[:space:]])level=ERROR([[:space:]]|$)' "$1" || true
}
