// Package sql holds todeviced's schema migrations, one folder per dialect,
// embedded into the binary. Migrations are numbered, each runs in one
// transaction, and replicas apply them under an advisory lock.
package sql

import "embed"

// Postgres holds the PostgreSQL migrations (postgres/*.sql).
//
//go:embed postgres/*.sql
var Postgres embed.FS
