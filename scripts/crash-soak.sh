#!/usr/bin/env bash
# Crash soak: run a verified todeviced-load against a todeviced that is
# killed with SIGKILL several times mid-load and restarted on the same
# database, then check that every send that got a 200 was delivered exactly
# once, nothing twice, in order, and that no inbox row was left behind.
#
#   scripts/crash-soak.sh                 # 5 kills over a 60 s load
#   KILLS=10 DURATION=120 scripts/crash-soak.sh
#
# Settings (environment):
#   PG_URL      PostgreSQL server, without a database name
#               (default postgres://postgres@127.0.0.1:5432)
#   LISTEN      address todeviced listens on (default 127.0.0.1:18008)
#   KILLS       SIGKILLs during the sending phase (default 5)
#   DURATION    sending phase in seconds (default 60)
#   DOWN_MAX_MS longest pause before restarting, in ms (default 2000)
#   LOAD_ARGS   extra todeviced-load flags (default: a small, fast load)
#   SEED        seed of the kill points and the load (default: random)
#   KEEP        1 keeps the work directory (logs, report) and the database
#
# It exits 0 when the load passed verification and the inbox is empty, 1
# otherwise. Only loopback addresses are used.
set -euo pipefail

PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432}
LISTEN=${LISTEN:-127.0.0.1:18008}
KILLS=${KILLS:-5}
DURATION=${DURATION:-60}
DOWN_MAX_MS=${DOWN_MAX_MS:-2000}
LOAD_ARGS=${LOAD_ARGS:---users 50 --devices-per-user 2 --senders 8 --fanout 4}
SEED=${SEED:-$((RANDOM * 32768 + RANDOM))}
KEEP=${KEEP:-0}
SECRET=soak-$RANDOM$RANDOM

cd "$(dirname "$0")/.."
# shellcheck source=scripts/logs.sh
. scripts/logs.sh
work=$(mktemp -d -t todeviced-soak.XXXXXX)
db=todeviced_soak_$(date +%s)_$$
dburl="$PG_URL/$db?sslmode=disable"
server_pid=
load_pid=

log() { printf '%s crash-soak: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

cleanup() {
	# Only the processes this script started, by pid.
	if [[ -n $load_pid ]] && kill -0 "$load_pid" 2>/dev/null; then kill -KILL "$load_pid" 2>/dev/null || true; fi
	if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then kill -TERM "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
	if [[ $KEEP == 1 ]]; then
		log "kept $work and database $db"
	else
		psql "$PG_URL/postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
		rm -rf "$work"
	fi
}
trap cleanup EXIT

# rand_ms LO HI: a random number of milliseconds in [LO, HI].
rand_ms() { echo $(($1 + (RANDOM * 32768 + RANDOM) % ($2 - $1 + 1))); }
secs() { printf '%d.%03d' $(($1 / 1000)) $(($1 % 1000)); }

start_server() {
	"$work/todeviced" --database-url "$dburl" --internal-secret "$SECRET" --listen "$LISTEN" \
		--metrics-listen "" --log-level warn >>"$work/server.log" 2>&1 &
	server_pid=$!
	for _ in $(seq 100); do
		if curl -fsS -o /dev/null "http://$LISTEN/_matrix/client/versions" 2>/dev/null; then return 0; fi
		if ! kill -0 "$server_pid" 2>/dev/null; then break; fi
		sleep 0.1
	done
	log "todeviced did not come up; its log:"
	tail -n 30 "$work/server.log" >&2
	return 1
}

RANDOM=$((SEED % 32768))
log "seed $SEED, $KILLS kills over ${DURATION}s, work dir $work"
log "building"
go build -o "$work/todeviced" ./cmd/todeviced
go build -o "$work/todeviced-load" ./cmd/todeviced-load
psql "$PG_URL/postgres" -qc "CREATE DATABASE $db" >/dev/null
start_server

# shellcheck disable=SC2086 # LOAD_ARGS is a list of flags
"$work/todeviced-load" --url "http://$LISTEN" --internal-secret "$SECRET" --seed "$SEED" \
	--duration "${DURATION}s" --drain-timeout 120s --sync-timeout 10s --sync-drop-rate 0.01 \
	--keep-devices --progress-interval 5s $LOAD_ARGS \
	>"$work/report.txt" 2>"$work/load.log" &
load_pid=$!

# Kill points are absolute times from the start of sending: kill i falls at
# random within [i-1/2, i+1/2] slices of DURATION/(KILLS+1), so they cover the
# run without bunching up and all land before sending stops, however long
# each restart takes (a kill whose time has passed waits 1 s of uptime).
now_ms() { echo $(($(date +%s%N) / 1000000)); }
for _ in $(seq 1200); do
	if grep -q 'syncers ready' "$work/load.log" 2>/dev/null || ! kill -0 "$load_pid" 2>/dev/null; then break; fi
	sleep 0.1
done
t0=$(now_ms)
slice_ms=$((DURATION * 1000 / (KILLS + 1)))
killed=0
for i in $(seq "$KILLS"); do
	at=$((t0 + i * slice_ms + $(rand_ms 0 "$slice_ms") - slice_ms / 2))
	wait_ms=$((at - $(now_ms)))
	sleep "$(secs $((wait_ms > 1000 ? wait_ms : 1000)))"
	if ! kill -0 "$load_pid" 2>/dev/null; then
		log "the load ended before kill $i"
		break
	fi
	kill -KILL "$server_pid"
	wait "$server_pid" 2>/dev/null || true
	killed=$i
	down=$(rand_ms 0 "$DOWN_MAX_MS")
	log "kill $i/$KILLS at $(secs $(($(now_ms) - t0)))s of sending: SIGKILLed todeviced, restarting in $(secs "$down")s"
	sleep "$(secs "$down")"
	start_server
done

rc=0
wait "$load_pid" || rc=$?
if [[ $killed -lt $KILLS ]]; then
	log "FAIL: only $killed of $KILLS kills happened during the load"
	rc=1
fi
load_pid=
cat "$work/report.txt"
grep -v '^\[' "$work/load.log" | grep -iv 'level=INFO' >&2 || true

run=$(grep -o 'run=[0-9a-f]*' "$work/load.log" | head -n 1 | cut -d= -f2)
left=$(psql "$dburl" -Atc "SELECT count(*) FROM device_inbox WHERE user_id LIKE '@load-$run-%'")
if [[ $left != 0 ]]; then
	log "FAIL: $left inbox rows of run $run left behind after the final acknowledgements"
	rc=1
fi
errors=$(count_log_errors "$work/server.log")
log "server logged $errors error lines (expected around kills: connections cut mid-request)"
if [[ $rc == 0 ]]; then
	log "PASS: $KILLS SIGKILLs, every confirmed send delivered exactly once, in order; inbox empty"
else
	log "FAIL (exit $rc); rerun with SEED=$SEED KEEP=1 to keep logs and the database"
fi
exit "$rc"
