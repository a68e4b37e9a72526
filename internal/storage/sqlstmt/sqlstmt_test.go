package sqlstmt

import "testing"

func TestRewrite(t *testing.T) {
	s := New(`SELECT greatest(a, $2), strpos(b, ':'), $1::text FROM t WHERE c {in $3} AND d = {now} AND e IN ({rows $1}) {forupdate}`)
	if want := `SELECT greatest(a, $2), strpos(b, ':'), $1::text FROM t WHERE c = ANY($3) AND d = now() AND e IN (SELECT unnest($1::text[])) FOR UPDATE`; s.SQL(Postgres) != want {
		t.Errorf("PostgreSQL:\n got %s\nwant %s", s.SQL(Postgres), want)
	}
	if want := `SELECT max(a, ?2), instr(b, ':'), ?1 FROM t WHERE c IN (SELECT value FROM json_each(?3)) AND d = ?4 AND e IN (SELECT value FROM json_each(?1))`; s.SQL(SQLite) != want || s.liteNow != 4 {
		t.Errorf("SQLite:\n got %s (now ?%d)\nwant %s", s.SQL(SQLite), s.liteNow, want)
	}
}
