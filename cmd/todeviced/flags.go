package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/todeviced/todeviced/internal/server"
)

// envPrefix prefixes the environment variable of every flag:
// --database-url is TODEVICED_DATABASE_URL.
const envPrefix = "TODEVICED_"

func envName(flagName string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// destinationsFlag parses name=url,name=url.
type destinationsFlag map[string]string

func (d *destinationsFlag) String() string {
	var parts []string
	for k, v := range *d {
		parts = append(parts, k+"="+v)
	}
	return strings.Join(parts, ",")
}

func (d *destinationsFlag) Set(s string) error {
	m := map[string]string{}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, u, ok := strings.Cut(part, "=")
		if !ok || name == "" || u == "" {
			return fmt.Errorf("%q: want name=url", part)
		}
		m[name] = u
	}
	*d = m
	return nil
}

type levelFlag struct{ l *slog.Level }

func (f levelFlag) String() string {
	if f.l == nil {
		return "info"
	}
	return strings.ToLower(f.l.String())
}
func (f levelFlag) Set(s string) error { return f.l.UnmarshalText([]byte(s)) }

// newFlagSet declares every setting of todeviced on cfg.
func newFlagSet(name string, cfg *server.Config, out io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&cfg.Listen, "listen", cfg.Listen, "address of the client, federation and internal HTTP API")
	fs.StringVar(&cfg.MetricsListen, "metrics-listen", cfg.MetricsListen, "address of /metrics, /healthz and /readyz (empty: off)")
	fs.StringVar(&cfg.DatabaseURL, "database-url", cfg.DatabaseURL, "postgres://… / postgresql://… or sqlite:PATH")
	fs.StringVar(&cfg.DatabaseDirectURL, "database-direct-url", cfg.DatabaseDirectURL, "PostgreSQL URL bypassing a transaction-pooling proxy, for LISTEN and migration locks (default: --database-url)")
	fs.IntVar(&cfg.DatabaseMaxConns, "database-max-conns", cfg.DatabaseMaxConns, "connection pool size: PostgreSQL's pool, SQLite's readers (SQLite writes on one connection) (0: PostgreSQL 4 per CPU, at least 16; SQLite one per CPU, at least 4)")
	fs.DurationVar(&cfg.DatabaseTimeout, "database-timeout", cfg.DatabaseTimeout, "longest a database call may take; past it the request answers 503 M_UNAVAILABLE (a frozen or locked database never answers)")
	fs.StringVar(&cfg.ServerName, "server-name", cfg.ServerName, "this homeserver's name; federation stays off while it is localhost")
	fs.StringVar(&cfg.InternalSecret, "internal-secret", cfg.InternalSecret, "bearer secret of /_todeviced/internal/* (empty: internal API off)")
	fs.StringVar(&cfg.AdminSecret, "admin-secret", cfg.AdminSecret, "bearer secret of the admin API /_todeviced/admin/v1 and of todeviced admin (empty: admin API off)")
	fs.StringVar(&cfg.UpstreamAuthURL, "upstream-auth-url", cfg.UpstreamAuthURL, "homeserver base URL whose /account/whoami verifies tokens todeviced does not hold (cached 5 s)")
	fs.StringVar(&cfg.SigningKey, "signing-key", cfg.SigningKey, "ed25519 signing key file (the homeserver's, behind one); created if missing")
	fs.BoolVar(&cfg.Migrate, "migrate", cfg.Migrate, "apply database migrations at start-up")
	fs.Var((*destinationsFlag)(&cfg.FederationDestinations), "federation-destinations", "name=url,... overriding server discovery (tests, private federations)")
	fs.BoolVar(&cfg.FederationTLSInsecure, "federation-tls-insecure", cfg.FederationTLSInsecure, "skip TLS verification of other servers: for tests only")
	fs.StringVar(&cfg.FederationOutbox, "federation-outbox", cfg.FederationOutbox, "how EDUs for other servers leave: send (todeviced's own sender) or feed (the homeserver pulls them from the internal API)")
	fs.DurationVar(&cfg.FederationMessageTTL, "federation-message-ttl", cfg.FederationMessageTTL, "drop EDUs for other servers not delivered within this time")
	fs.DurationVar(&cfg.FederationLeaseTTL, "federation-lease-ttl", cfg.FederationLeaseTTL, "how long a replica's claim to send to a destination lasts unless renewed (a dead replica's destinations wait this long)")
	fs.DurationVar(&cfg.FederationBackoffMin, "federation-backoff-min", cfg.FederationBackoffMin, "backoff ceiling after a destination's first failure; it doubles per failure (full jitter)")
	fs.DurationVar(&cfg.FederationBackoffMax, "federation-backoff-max", cfg.FederationBackoffMax, "largest backoff ceiling between attempts to a failing destination")
	fs.BoolVar(&cfg.ParkLongPolls, "park-long-polls", cfg.ParkLongPolls, "let HTTP/1.1 /sync long-polls wait without a goroutine or buffers (false: each waits on its connection's goroutines)")
	fs.BoolVar(&cfg.FederationDeviceNames, "federation-device-names", cfg.FederationDeviceNames, "show local devices' display names to other servers (device-list EDUs, /user/devices, /user/keys/query)")
	fs.DurationVar(&cfg.FederationRequestTimeout, "federation-request-timeout", cfg.FederationRequestTimeout, "deadline of a whole outbound federation request (discovery, connect, TLS, headers, body), key fetches included")
	fs.Int64Var(&cfg.FederationInflightBytes, "federation-inflight-bytes", cfg.FederationInflightBytes, "federation request bodies read at once before their signature is verified; over it: 429 M_LIMIT_EXCEEDED")
	fs.Var(levelFlag{&cfg.LogLevel}, "log-level", "debug, info, warn or error")
	fs.StringVar(&cfg.LogFormat, "log-format", cfg.LogFormat, "auto (text on a terminal, else JSON), json or text")
	fs.DurationVar(&cfg.InboxMaxAge, "inbox-max-age", cfg.InboxMaxAge, "drop messages pending longer than this (0: keep forever)")
	fs.IntVar(&cfg.InboxMaxMessages, "inbox-max-messages", cfg.InboxMaxMessages, "bound each device's inbox: housekeeping trims an inbox over it, requests and verification steps first, then the oldest (0: off)")
	fs.DurationVar(&cfg.TxnRetention, "txn-retention", cfg.TxnRetention, "how long sendToDevice transaction ids are remembered (at least 24h)")
	fs.Int64Var(&cfg.MaxSendBytes, "max-send-bytes", cfg.MaxSendBytes, "largest sendToDevice body accepted (0: 16 MiB)")
	fs.DurationVar(&cfg.RequestBodyTimeout, "request-body-timeout", cfg.RequestBodyTimeout, "longest a request body may take to arrive after its headers; a slower client is answered 408 and disconnected")
	fs.Float64Var(&cfg.SendRateLimit, "send-rate-limit", cfg.SendRateLimit, "sendToDevice requests a second per sending device, on each replica (0: no limit); over it: 429 M_LIMIT_EXCEEDED")
	fs.IntVar(&cfg.SendBurst, "send-burst", cfg.SendBurst, "sendToDevice requests a device may make at once before --send-rate-limit applies")
	fs.Float64Var(&cfg.KeyRequestRateLimit, "key-request-rate-limit", cfg.KeyRequestRateLimit, "m.room_key_request messages to other users a second, per recipient user, per sending device (per sending user over federation), on each replica (0: no limit); over it they are dropped and counted, the send still answers 200")
	fs.IntVar(&cfg.KeyRequestBurst, "key-request-burst", cfg.KeyRequestBurst, "room key requests to other users a sender may make at once before --key-request-rate-limit applies")
	fs.BoolVar(&cfg.Pprof, "pprof", cfg.Pprof, "serve Go profiling (net/http/pprof) at /debug/pprof/ on the metrics listener")
	fs.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", cfg.ShutdownTimeout, "how long in-flight requests may take to finish at shutdown")
	fs.Usage = func() {
		fmt.Fprintf(out, "Usage: todeviced [serve|migrate [up|status]|device add USER_ID DEVICE_ID|version] [flags]\n\nFlags (each also read from its environment variable; a flag wins):\n")
		fs.VisitAll(func(f *flag.Flag) {
			def := f.DefValue
			if def == "" {
				def = "none"
			}
			fmt.Fprintf(out, "  --%s  (%s, default %s)\n      %s\n", f.Name, envName(f.Name), def, f.Usage)
		})
	}
	return fs
}

// parseInterleaved parses flags wherever they stand among the positional
// arguments, returning the positional ones and the names of the flags given.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, map[string]bool, error) {
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, nil, err
		}
		if fs.NArg() == 0 {
			break
		}
		positional = append(positional, fs.Arg(0))
		args = fs.Args()[1:]
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	return positional, given, nil
}

// parseArgs parses flags wherever they stand among the positional arguments,
// then fills every flag not given from its environment variable.
func parseArgs(fs *flag.FlagSet, args []string, getenv func(string) string) ([]string, error) {
	positional, given, err := parseInterleaved(fs, args)
	if err != nil {
		return nil, err
	}
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] {
			return
		}
		if v, ok := lookupEnv(getenv, envName(f.Name)); ok {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("%s=%q: %v", envName(f.Name), v, err))
			}
		}
	})
	return positional, errors.Join(errs...)
}

func lookupEnv(getenv func(string) string, name string) (string, bool) {
	if getenv == nil {
		return os.LookupEnv(name)
	}
	v := getenv(name)
	return v, v != ""
}
