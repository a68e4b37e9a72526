// Command todeviced-load drives a running todeviced over HTTP and verifies
// that every to-device message arrived exactly once, in order.
//
//	todeviced-load --url http://127.0.0.1:8008 --internal-secret S [flags]
//
// It provisions --users × --devices-per-user devices, runs --senders senders
// (each send to --fanout devices) and one long-polling syncer per device for
// --duration or --messages sends, drains, verifies, and prints a report. It
// exits 0 when the run passed, 1 on any loss, duplicate, reordering or run
// failure, 2 on bad flags. See docs/LOAD.md.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/term"

	"github.com/todeviced/todeviced/internal/loadgen"
)

func main() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	os.Exit(run(ctx, cancel, os.Args[1:], os.Stdout, os.Stderr))
}

// options are the flags beyond loadgen.Config.
type options struct {
	json bool
	csv  string
}

// newFlagSet declares the flags on cfg and opts.
func newFlagSet(cfg *loadgen.Config, opts *options, out io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("todeviced-load", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&cfg.URL, "url", cfg.URL, "todeviced's API base URL")
	fs.StringVar(&cfg.InternalSecret, "internal-secret", cfg.InternalSecret, "todeviced's --internal-secret (default $TODEVICED_INTERNAL_SECRET)")
	fs.StringVar(&cfg.ServerName, "server-name", cfg.ServerName, "todeviced's --server-name, the server part of the user ids")
	fs.IntVar(&cfg.Users, "users", cfg.Users, "users to provision")
	fs.IntVar(&cfg.DevicesPerUser, "devices-per-user", cfg.DevicesPerUser, "devices per user; each device gets one long-polling syncer")
	fs.IntVar(&cfg.Senders, "senders", cfg.Senders, "concurrent senders, each sending as one of the devices, one send at a time")
	fs.IntVar(&cfg.Fanout, "fanout", cfg.Fanout, "distinct devices each send addresses")
	fs.IntVar(&cfg.MessageBytes, "message-bytes", cfg.MessageBytes, "size of each message's content JSON")
	fs.Float64Var(&cfg.Rate, "rate", cfg.Rate, "target sends per second over all senders (0: as fast as possible)")
	fs.DurationVar(&cfg.Duration, "duration", cfg.Duration, "length of the sending phase (0: until --messages)")
	fs.Int64Var(&cfg.Messages, "messages", cfg.Messages, "stop after this many sends (0: until --duration); given alone, --duration is unlimited")
	fs.DurationVar(&cfg.DrainTimeout, "drain-timeout", cfg.DrainTimeout, "after sending stops, how long to wait for retries to be confirmed and everything to arrive")
	fs.DurationVar(&cfg.SyncTimeout, "sync-timeout", cfg.SyncTimeout, "long-poll timeout of the syncers")
	fs.Uint64Var(&cfg.Seed, "seed", cfg.Seed, "seed of the recipient choice (the run id stays random)")
	fs.BoolVar(&cfg.DeliverAfterSend, "deliver-after-send", cfg.DeliverAfterSend, "start the syncers only after the sending phase, so it measures accepting alone (like --baseline's COPY); latencies then include the wait")
	fs.BoolVar(&cfg.H2C, "h2c", cfg.H2C, "speak HTTP/2 without TLS (as a reverse proxy with an h2c upstream would); default HTTP/1.1, one connection per request in flight")
	fs.Float64Var(&cfg.SyncDropRate, "sync-drop-rate", cfg.SyncDropRate, "fraction of sync responses to throw away unprocessed, to check redelivery")
	fs.BoolVar(&cfg.Baseline, "baseline", cfg.Baseline, "also COPY the same rows straight into device_inbox and report todeviced's share of that rate (needs --database-url)")
	fs.StringVar(&cfg.DatabaseURL, "database-url", cfg.DatabaseURL, "todeviced's PostgreSQL database, for --baseline (default $TODEVICED_DATABASE_URL)")
	fs.BoolVar(&cfg.KeepDevices, "keep-devices", cfg.KeepDevices, "do not delete the provisioned devices at the end")
	fs.DurationVar(&cfg.ProgressInterval, "progress-interval", cfg.ProgressInterval, "how often to print a progress line when stderr is not a terminal")
	fs.BoolVar(&opts.json, "json", false, "print the report as JSON on stdout")
	fs.StringVar(&opts.csv, "csv", "", "write per-second samples to this CSV file")
	return fs
}

// run is main with its inputs injected. cancel aborts ctx (a second
// interrupt); the first interrupt only ends the sending phase.
func run(ctx context.Context, cancel context.CancelFunc, args []string, stdout, stderr io.Writer) int {
	cfg := loadgen.Defaults()
	cfg.InternalSecret = os.Getenv("TODEVICED_INTERNAL_SECRET")
	cfg.DatabaseURL = os.Getenv("TODEVICED_DATABASE_URL")
	var opts options
	fs := newFlagSet(&cfg, &opts, stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "todeviced-load: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	if given["messages"] && !given["duration"] {
		cfg.Duration = 0
	}

	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	cfg.Logger = log
	cfg.Progress = stderr
	if f, ok := stderr.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		cfg.ProgressTTY = true
	}
	if opts.csv != "" {
		f, err := os.Create(opts.csv)
		if err != nil {
			fmt.Fprintf(stderr, "todeviced-load: --csv: %v\n", err)
			return 2
		}
		defer f.Close()
		cfg.CSV = f
	}

	r, err := loadgen.New(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "todeviced-load: %v\n", err)
		return 2
	}

	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	go func() {
		select {
		case <-sigs:
		case <-ctx.Done():
			return
		}
		log.Warn("interrupted: sending stops, draining and verifying; interrupt again to abort")
		r.Stop()
		select {
		case <-sigs:
			cancel()
		case <-ctx.Done():
		}
	}()

	log.Info("starting", "run", r.RunID(), "url", cfg.URL, "devices", cfg.Devices(), "senders", cfg.Senders)
	rep, err := r.Run(ctx)
	if rep != nil {
		if werr := writeReport(stdout, rep, opts.json); werr != nil {
			fmt.Fprintf(stderr, "todeviced-load: writing the report: %v\n", werr)
			return 1
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "todeviced-load: %v\n", err)
		return 1
	}
	if !rep.OK() {
		return 1
	}
	return 0
}

func writeReport(w io.Writer, rep *loadgen.Report, asJSON bool) error {
	if !asJSON {
		return rep.WriteTable(w)
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(rep)
}
