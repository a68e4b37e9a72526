// Package sql holds todeviced's schema migrations, one folder per dialect,
// embedded into the binary. Migrations are numbered and each runs in one
// transaction. PostgreSQL replicas apply them under an advisory lock; SQLite
// processes sharing a database file under a lock file beside it.
package sql

import "embed"

// Postgres holds the PostgreSQL migrations (postgres/*.sql).
//
//go:embed postgres/*.sql
var Postgres embed.FS

// SQLite holds the SQLite migrations (sqlite/*.sql): the same tables and
// meaning as the PostgreSQL ones, in SQLite's dialect.
//
//go:embed sqlite/*.sql
var SQLite embed.FS
