// Package sqlstmt holds the SQL statements the two backends share: each
// written once, in PostgreSQL's dialect with $N placeholders and a few
// templates, and rewritten for SQLite once, when the program starts. A
// statement runs on a Conn, which hides whether pgx or database/sql runs
// it and translates Go values to and from SQLite's storage classes.
//
// What differs between the dialects stays visible in the text:
//
//   - $N is ?N on SQLite, which binds exactly by number; casts (::text)
//     are dropped there.
//   - greatest, least and strpos are max, min and instr on SQLite.
//   - {in $N} tests membership in the list $N: = ANY($N) on PostgreSQL, an
//     IN over json_each of the list (bound as a JSON array) on SQLite,
//     which so needs no chunking below its bound-parameter limit.
//   - {rows $N} selects the texts of the list $N as rows.
//   - {now} is now() on PostgreSQL and, on SQLite, the clock reading the
//     Conn was made with (a transaction's), bound as one more parameter.
//   - {forupdate} locks the rows read on PostgreSQL; SQLite's writers take
//     turns, so nothing else can change them.
//
// Where the dialects need different statements, Split keeps both texts
// side by side. The hot paths (accept, group accept and commit, the
// one-round-trip sync) do not use this package.
package sqlstmt

import (
	"regexp"
	"strconv"
	"strings"
)

// Dialect is a database's SQL dialect.
type Dialect uint8

const (
	Postgres Dialect = iota
	SQLite
)

// Stmt is one statement, rewritten for each dialect.
type Stmt struct {
	pg, lite string
	// liteNow is the parameter number {now} binds on SQLite, 0 if none.
	liteNow int
}

// SQL is the statement's text in the dialect.
func (s *Stmt) SQL(d Dialect) string {
	if d == SQLite {
		return s.lite
	}
	return s.pg
}

// New rewrites one text for both dialects.
func New(text string) *Stmt { return Split(text, text) }

// Split takes a text per dialect, each written as New's is, where the
// dialects need different statements.
func Split(pg, lite string) *Stmt {
	s := &Stmt{pg: rewritePG(pg)}
	s.lite, s.liteNow = rewriteSQLite(lite)
	return s
}

var (
	placeholder = regexp.MustCompile(`\$([0-9]+)`)
	inList      = regexp.MustCompile(`\{in (\$[0-9]+)\}`)
	textRows    = regexp.MustCompile(`\{rows (\$[0-9]+)\}`)
	cast        = regexp.MustCompile(`::[a-z_]+(\[\])?`)
	liteFuncs   = strings.NewReplacer("greatest(", "max(", "least(", "min(", "strpos(", "instr(")
)

func rewritePG(text string) string {
	text = inList.ReplaceAllString(text, "= ANY($1)")
	text = textRows.ReplaceAllString(text, "SELECT unnest($1::text[])")
	return strings.NewReplacer("{now}", "now()", "{forupdate}", "FOR UPDATE").Replace(text)
}

func rewriteSQLite(text string) (string, int) {
	text = inList.ReplaceAllString(text, "IN (SELECT value FROM json_each($1))")
	text = textRows.ReplaceAllString(text, "SELECT value FROM json_each($1)")
	text = cast.ReplaceAllString(text, "")
	text = liteFuncs.Replace(text)
	text = strings.NewReplacer(" {forupdate}", "", "{forupdate}", "").Replace(text)
	n := 0
	for _, m := range placeholder.FindAllStringSubmatch(text, -1) {
		i, _ := strconv.Atoi(m[1])
		n = max(n, i)
	}
	now := 0
	if strings.Contains(text, "{now}") {
		now = n + 1
		text = strings.ReplaceAll(text, "{now}", "$"+strconv.Itoa(now))
	}
	return placeholder.ReplaceAllString(text, "?$1"), now
}
