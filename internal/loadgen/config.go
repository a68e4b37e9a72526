// Package loadgen drives a running todeviced over HTTP and checks that
// every to-device message arrived exactly once and in order: the library
// behind cmd/todeviced-load and the in-process load test.
//
// A run provisions Users × DevicesPerUser devices through the internal API,
// starts one long-polling syncer per device and Senders senders, each sending
// to Fanout devices at a time, for Duration or until Messages sends; then it
// stops sending, lets the syncers drain, verifies (see Verify for the rules),
// optionally measures the raw database baseline with COPY, and deletes its
// devices.
package loadgen

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"
)

// Config is one run.
type Config struct {
	// URL is todeviced's API (http://host:port).
	URL string
	// InternalSecret is the bearer secret of the internal API.
	InternalSecret string
	// ServerName is the server part of the user ids (todeviced's --server-name).
	ServerName string

	Users          int
	DevicesPerUser int
	Senders        int
	// Fanout is the number of distinct devices each send addresses.
	Fanout int
	// MessageBytes is the size of each message's content JSON.
	MessageBytes int
	// Rate is the target of sends per second over all senders; 0 sends as
	// fast as the server answers.
	Rate float64
	// Duration bounds the sending phase (0: until Messages sends).
	Duration time.Duration
	// Messages bounds the number of sends (0: until Duration).
	Messages int64
	// DrainTimeout is how long, after sending stops, the run waits for
	// unconfirmed sends to be confirmed and for every message to arrive.
	DrainTimeout time.Duration
	// SyncTimeout is the long-poll timeout syncers ask for.
	SyncTimeout time.Duration
	// Seed makes the choice of recipients reproducible.
	Seed uint64

	// SyncDropRate is the fraction of sync responses a syncer throws away
	// unprocessed (not acknowledged), to exercise redelivery.
	SyncDropRate float64

	// Baseline measures COPY into device_inbox through DatabaseURL.
	Baseline    bool
	DatabaseURL string

	// KeepDevices leaves the provisioned devices in place at the end.
	KeepDevices bool
	// DeliverAfterSend starts the syncers only when the sending phase is
	// over, so the sending phase measures accepting alone (as the COPY
	// baseline measures writing alone); latencies then include the wait.
	DeliverAfterSend bool
	// H2C speaks HTTP/2 without TLS (prior knowledge), as a reverse proxy
	// with an h2c upstream would.
	H2C bool

	// Progress receives the live progress line (nil: none). ProgressTTY
	// rewrites it in place; otherwise a line is written every
	// ProgressInterval.
	Progress         io.Writer
	ProgressTTY      bool
	ProgressInterval time.Duration
	// CSV receives per-second samples (nil: none).
	CSV io.Writer

	// Transport overrides the shared HTTP transport (tests).
	Transport http.RoundTripper
	Logger    *slog.Logger
}

// Defaults returns a configuration that runs in about ten seconds against
// a server on a laptop.
func Defaults() Config {
	return Config{
		URL:              "http://127.0.0.1:8008",
		ServerName:       "localhost",
		Users:            50,
		DevicesPerUser:   2,
		Senders:          8,
		Fanout:           4,
		MessageBytes:     256,
		Duration:         10 * time.Second,
		DrainTimeout:     30 * time.Second,
		SyncTimeout:      30 * time.Second,
		Seed:             1,
		ProgressInterval: 5 * time.Second,
	}
}

// Devices is the number of devices the run provisions.
func (c Config) Devices() int { return c.Users * c.DevicesPerUser }

// Validate names every setting that is wrong.
func (c Config) Validate() error {
	var errs []error
	if !strings.HasPrefix(c.URL, "http://") && !strings.HasPrefix(c.URL, "https://") {
		errs = append(errs, fmt.Errorf("--url %q: want http://host:port", c.URL))
	}
	if c.InternalSecret == "" {
		errs = append(errs, errors.New("--internal-secret is required (todeviced's --internal-secret)"))
	}
	if c.ServerName == "" {
		errs = append(errs, errors.New("--server-name must not be empty"))
	}
	if c.Users < 1 || c.DevicesPerUser < 1 {
		errs = append(errs, errors.New("--users and --devices-per-user must be at least 1"))
	}
	if c.Senders < 1 {
		errs = append(errs, errors.New("--senders must be at least 1"))
	}
	if c.Fanout < 1 || c.Fanout > c.Devices() {
		errs = append(errs, fmt.Errorf("--fanout must be between 1 and the number of devices (%d)", c.Devices()))
	}
	if c.MessageBytes < 0 || c.MessageBytes > 60<<10 {
		errs = append(errs, errors.New("--message-bytes must be between 0 and 61440 (todeviced caps a message at 64 KiB)"))
	}
	if c.Rate < 0 {
		errs = append(errs, errors.New("--rate must not be negative"))
	}
	if c.Duration < 0 || c.Messages < 0 || (c.Duration == 0 && c.Messages == 0) {
		errs = append(errs, errors.New("give a positive --duration or --messages"))
	}
	if c.Messages > 1<<31 {
		errs = append(errs, errors.New("--messages must be at most 2^31"))
	}
	if c.DrainTimeout <= 0 {
		errs = append(errs, errors.New("--drain-timeout must be positive"))
	}
	if c.SyncTimeout < 0 {
		errs = append(errs, errors.New("--sync-timeout must not be negative"))
	}
	if c.SyncDropRate < 0 || c.SyncDropRate >= 1 {
		errs = append(errs, errors.New("--sync-drop-rate must be in [0, 1)"))
	}
	if c.Baseline && c.DatabaseURL == "" {
		errs = append(errs, errors.New("--baseline needs --database-url"))
	}
	return errors.Join(errs...)
}
