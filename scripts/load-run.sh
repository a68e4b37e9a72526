#!/usr/bin/env bash
# One measured load run, as docs/PERFORMANCE.md reports them: builds todeviced
# and todeviced-load, starts todeviced on a fresh database, runs the load
# against it while sampling todeviced's resident memory once a second, prints
# the load's report and the memory figures, and cleans up.
#
#   scripts/load-run.sh                                   # PostgreSQL, default load, 30 s
#   scripts/load-run.sh --rate 250 --duration 60s         # flags after the name go to todeviced-load
#   BACKEND=sqlite scripts/load-run.sh --duration 30s
#   SERVER_ARGS='--database-max-conns 32' scripts/load-run.sh --baseline
#
# Settings (environment):
#   BACKEND      postgres (default) or sqlite
#   PG_URL       PostgreSQL server, without a database name
#                (default postgres://postgres@127.0.0.1:5432)
#   LISTEN       address todeviced listens on (default 127.0.0.1:18500)
#   SERVER_ARGS  extra todeviced flags
#   SERVER_ENV   extra environment for todeviced, e.g. GODEBUG=adaptivestackstart=0
#   KEEP         1 keeps the work directory (logs, samples) and the database
#
# `--baseline` gets `--database-url` added on PostgreSQL. The exit status is
# the load's: 0 when verification passed. Only loopback addresses are used.
set -euo pipefail

BACKEND=${BACKEND:-postgres}
PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432}
LISTEN=${LISTEN:-127.0.0.1:18500}
SERVER_ARGS=${SERVER_ARGS:-}
SERVER_ENV=${SERVER_ENV:-}
KEEP=${KEEP:-0}
SECRET=perf-$RANDOM$RANDOM

cd "$(dirname "$0")/.."
# shellcheck source=scripts/logs.sh
. scripts/logs.sh
work=$(mktemp -d -t todeviced-perf.XXXXXX)
db=todeviced_perf_$(date +%s)_$$
server_pid=
sampler_pid=

log() { printf '%s load-run: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

cleanup() {
	if [[ -n $sampler_pid ]]; then kill "$sampler_pid" 2>/dev/null || true; fi
	if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
		kill -TERM "$server_pid" 2>/dev/null || true
		wait "$server_pid" 2>/dev/null || true
	fi
	if [[ $KEEP == 1 ]]; then
		log "kept $work (and, on PostgreSQL, database $db)"
		return
	fi
	if [[ $BACKEND == postgres ]]; then
		psql "$PG_URL/postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
	fi
	rm -rf "$work"
}
trap cleanup EXIT

case $BACKEND in
postgres)
	dburl="$PG_URL/$db?sslmode=disable"
	psql "$PG_URL/postgres" -qc "CREATE DATABASE $db" >/dev/null
	;;
sqlite)
	dburl="sqlite:$work/todeviced.db"
	;;
*)
	log "BACKEND must be postgres or sqlite, not $BACKEND"
	exit 2
	;;
esac

log "building"
go build -o "$work/todeviced" ./cmd/todeviced
go build -o "$work/todeviced-load" ./cmd/todeviced-load

load_args=("$@")
for a in "${load_args[@]}"; do
	if [[ $a == --baseline || $a == -baseline ]] && [[ $BACKEND == postgres ]]; then
		load_args+=(--database-url "$dburl")
		break
	fi
done

# shellcheck disable=SC2086 # SERVER_ENV and SERVER_ARGS are word lists
env $SERVER_ENV "$work/todeviced" --database-url "$dburl" --internal-secret "$SECRET" \
	--listen "$LISTEN" --metrics-listen "" --log-level warn $SERVER_ARGS >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 100); do
	if curl -fsS -o /dev/null "http://$LISTEN/_matrix/client/versions" 2>/dev/null; then break; fi
	if ! kill -0 "$server_pid" 2>/dev/null; then
		log "todeviced did not come up; its log:"
		tail -n 30 "$work/server.log" >&2
		exit 1
	fi
	sleep 0.1
done

# Resident memory once a second: "seconds-since-start kB".
(
	start=$(date +%s)
	while kill -0 "$server_pid" 2>/dev/null; do
		rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$server_pid/status" 2>/dev/null || true)
		[[ -n $rss ]] && echo "$(($(date +%s) - start)) $rss"
		sleep 1
	done
) >"$work/rss.txt" &
sampler_pid=$!

log "todeviced ($BACKEND) on $LISTEN; load: ${load_args[*]:-defaults}"
rc=0
"$work/todeviced-load" --url "http://$LISTEN" --internal-secret "$SECRET" "${load_args[@]}" || rc=$?

hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$server_pid/status")
kill "$sampler_pid" 2>/dev/null || true
sampler_pid=
# The median of the samples taken while the load ran is the steady state;
# the peak includes the connection storm at the start.
median=$(sort -n -k2 "$work/rss.txt" | awk '{a[NR]=$2} END {if (NR) print a[int((NR+1)/2)]; else print 0}')
printf '\ntodeviced resident memory: median %d MB over %d samples, peak %d MB\n' \
	$((median / 1024)) "$(wc -l <"$work/rss.txt")" $((hwm / 1024))
errors=$(count_log_errors "$work/server.log")
[[ $errors == 0 ]] || log "todeviced logged $errors error lines (kept in $work/server.log with KEEP=1)"
exit "$rc"
