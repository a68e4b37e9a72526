// Command todeviced is the send-to-device module of a Matrix homeserver.
//
//	todeviced [serve] [flags]            run the server (default)
//	todeviced migrate [up|status]        apply or list database migrations
//	todeviced device add USER DEVICE     create a device, print its access token
//	todeviced admin COMMAND …            call the admin API (todeviced admin --help)
//	todeviced version                    print the version
//
// Every flag has a TODEVICED_* environment variable; a flag wins.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"golang.org/x/term"

	"github.com/todeviced/todeviced/internal/devicelists"
	"github.com/todeviced/todeviced/internal/server"
	"github.com/todeviced/todeviced/internal/storage"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr, nil)
	stop()
	os.Exit(code)
}

// run is main with its inputs injected, for tests. It returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	cmd := "serve"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	if cmd == "admin" {
		return adminCmd(ctx, args, stdout, stderr, getenv)
	}
	cfg := server.Defaults()
	fs := newFlagSet("todeviced "+cmd, &cfg, stderr)
	pos, err := parseArgs(fs, args, getenv)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "todeviced: %v\n", err)
		return 2
	}
	log := newLogger(cfg, stderr)
	switch cmd {
	case "serve":
		if len(pos) > 0 {
			return usage(stderr, "serve takes no arguments")
		}
		return serve(ctx, cfg, log, stderr)
	case "migrate":
		action := "up"
		if len(pos) > 1 {
			return usage(stderr, "migrate takes one argument: up or status")
		}
		if len(pos) == 1 {
			action = pos[0]
		}
		return migrate(ctx, cfg, action, log, stdout, stderr)
	case "device":
		if len(pos) != 3 || pos[0] != "add" {
			return usage(stderr, "usage: todeviced device add USER_ID DEVICE_ID")
		}
		return deviceAdd(ctx, cfg, pos[1], pos[2], log, stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, "todeviced", versionString())
		return 0
	case "help":
		fs.Usage()
		return 0
	}
	return usage(stderr, fmt.Sprintf("unknown command %q", cmd))
}

func usage(stderr io.Writer, msg string) int {
	fmt.Fprintf(stderr, "todeviced: %s\nUsage: todeviced [serve|migrate [up|status]|device add USER_ID DEVICE_ID|admin COMMAND|version] [flags]; todeviced --help lists the flags\n", msg)
	return 2
}

func versionString() string {
	v := version
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				v += " (" + s.Value[:12] + ")"
			}
		}
	}
	return v
}

func newLogger(cfg server.Config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.LogLevel}
	format := cfg.LogFormat
	if format == "auto" {
		format = "json"
		if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			format = "text"
		}
	}
	if format == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

func serve(ctx context.Context, cfg server.Config, log *slog.Logger, stderr io.Writer) int {
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(stderr, "todeviced: %v\n", err)
		return 2
	}
	if cfg.FederationTLSInsecure {
		log.Warn("--federation-tls-insecure is set: TLS certificates of other servers are NOT verified; this is for tests only")
	}
	srv, err := server.New(ctx, cfg, log, server.Options{Version: versionString()})
	if err != nil {
		log.Error("starting todeviced", "err", err)
		return 1
	}
	if err := srv.Serve(ctx); err != nil {
		log.Error("serving", "err", err)
		return 1
	}
	return 0
}

func migrate(ctx context.Context, cfg server.Config, action string, log *slog.Logger, stdout, stderr io.Writer) int {
	if _, err := storage.Kind(cfg.DatabaseURL); err != nil {
		fmt.Fprintf(stderr, "todeviced: %v\n", err)
		return 2
	}
	switch action {
	case "up":
		n, err := storage.Migrate(ctx, cfg.DatabaseURL, cfg.DatabaseDirectURL, log)
		if err != nil {
			log.Error("migrating", "err", err)
			return 1
		}
		fmt.Fprintf(stdout, "applied %d migration(s)\n", n)
		return 0
	case "status":
		st, err := storage.Status(ctx, cfg.DatabaseURL, cfg.DatabaseDirectURL)
		if err != nil {
			log.Error("reading migration status", "err", err)
			return 1
		}
		for _, s := range st {
			state := "pending"
			if s.Applied {
				state = "applied"
			}
			fmt.Fprintf(stdout, "%05d  %-8s %s\n", s.Version, state, s.Name)
		}
		return 0
	}
	return usage(stderr, fmt.Sprintf("unknown migrate action %q (want up or status)", action))
}

func deviceAdd(ctx context.Context, cfg server.Config, userID, deviceID string, log *slog.Logger, stdout, stderr io.Writer) int {
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(stderr, "todeviced: %v\n", err)
		return 2
	}
	backend, err := storage.Open(ctx, storage.Options{URL: cfg.DatabaseURL, DirectURL: cfg.DatabaseDirectURL, Migrate: cfg.Migrate, Logger: log})
	if err != nil {
		log.Error("opening database", "err", err)
		return 1
	}
	defer backend.Close()
	reg := devicelists.New(backend.Devices(), cfg.ServerName, log, nil)
	token := devicelists.NewToken()
	if _, _, err := reg.PutDevice(ctx, userID, deviceID, token, nil, nil); err != nil {
		fmt.Fprintf(stderr, "todeviced: %v\n", err)
		return 1
	}
	fmt.Fprintln(stdout, token)
	return 0
}
