// Package archtest holds the tests that keep todeviced's structure as
// docs/ARCHITECTURE.md describes it: which package may import which. It has
// no code of its own.
package archtest
