package server

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/todeviced/todeviced/internal/federation"
	"github.com/todeviced/todeviced/internal/httpapi"
	"github.com/todeviced/todeviced/internal/inbox"
	"github.com/todeviced/todeviced/internal/matrix"
	"github.com/todeviced/todeviced/internal/matrixfed"
	"github.com/todeviced/todeviced/internal/storage"
)

// Defaults of the configuration, as the command line documents them.
const (
	DefaultListen        = "127.0.0.1:8008"
	DefaultMetricsListen = "127.0.0.1:9108"
	DefaultDatabaseURL   = "sqlite:todeviced.db"
	DefaultServerName    = "localhost"
	DefaultSigningKey    = "signing.key"
	// DefaultInboxMaxAge drops messages nobody collected for 90 days: a
	// device silent that long is abandoned in practice, and without a bound
	// its inbox grows forever (the fate of every established server's table).
	DefaultInboxMaxAge = 90 * 24 * time.Hour
	// DefaultSendBurst is how many sendToDevice requests a device may make at
	// once before --send-rate-limit applies: room key shares come in bursts
	// when a user opens a busy room.
	DefaultSendBurst = 100
	// DefaultDatabaseTimeout bounds every database call (see
	// storage.DefaultCallTimeout).
	DefaultDatabaseTimeout = storage.DefaultCallTimeout
	// DefaultRequestBodyTimeout is how long a request body may take to
	// arrive (see httpapi.DefaultBodyTimeout).
	DefaultRequestBodyTimeout = httpapi.DefaultBodyTimeout
	// DefaultShutdownTimeout is how long in-flight requests get to finish.
	DefaultShutdownTimeout = 15 * time.Second
	// DefaultFederationOutbox: todeviced sends its EDUs itself.
	DefaultFederationOutbox = FederationOutboxSend
	// DefaultFederationMessageTTL drops EDUs a destination has not taken
	// for a week: a server down that long is gone in practice, and the
	// keys the messages carry are stale.
	DefaultFederationMessageTTL = federation.DefaultMessageTTL
	// DefaultFederationLeaseTTL, DefaultFederationBackoffMin and
	// DefaultFederationBackoffMax are the sender's, documented there.
	DefaultFederationLeaseTTL   = federation.DefaultLeaseTTL
	DefaultFederationBackoffMin = matrixfed.DefaultBackoffMin
	DefaultFederationBackoffMax = matrixfed.DefaultBackoffMax
)

// Ways out of the federation outbox (--federation-outbox).
const (
	// FederationOutboxSend: todeviced's own sender signs and sends
	// transactions (standalone, or beside a homeserver whose key file it
	// shares).
	FederationOutboxSend = "send"
	// FederationOutboxFeed: no sender runs; the homeserver pulls the outbox
	// through the internal API and sends the EDUs in its own transactions.
	FederationOutboxFeed = "feed"
)

// placeholderSecrets are internal secrets that example files and habit put
// in place of a real one (compared without case). Whoever can reach the
// internal API with its secret can create devices and tokens, so todeviced
// refuses to start with one of these.
var placeholderSecrets = []string{
	"change-me", "changeme", "change_me", "change-this", "changethis", "changeit",
	"replace-me", "replaceme", "secret", "password",
}

// Config is the whole configuration of a todeviced process.
type Config struct {
	Listen                 string
	MetricsListen          string
	DatabaseURL            string
	DatabaseDirectURL      string
	DatabaseMaxConns       int
	DatabaseTimeout        time.Duration
	RequestBodyTimeout     time.Duration
	ServerName             string
	InternalSecret         string
	AdminSecret            string
	UpstreamAuthURL        string
	SigningKey             string
	Migrate                bool
	FederationDestinations map[string]string
	FederationTLSInsecure  bool
	LogLevel               slog.Level
	LogFormat              string
	InboxMaxAge            time.Duration
	// InboxMaxMessages bounds each device's inbox (--inbox-max-messages;
	// 0: no bound).
	InboxMaxMessages    int
	TxnRetention        time.Duration
	MaxSendBytes        int64
	SendRateLimit       float64
	SendBurst           int
	KeyRequestRateLimit float64
	KeyRequestBurst     int
	ShutdownTimeout     time.Duration
	// ParkLongPolls lets HTTP/1.1 /sync long-polls wait without a
	// goroutine (--park-long-polls; httpapi.Parking).
	ParkLongPolls bool
	// Pprof serves net/http/pprof under /debug/pprof/ on the metrics listener.
	Pprof                bool
	FederationOutbox     string
	FederationMessageTTL time.Duration
	FederationLeaseTTL   time.Duration
	FederationBackoffMin time.Duration
	FederationBackoffMax time.Duration
	// FederationDeviceNames shows local devices' display names to other
	// servers (EDUs, /user/devices, /user/keys/query). Off by default, as
	// Synapse's allow_device_name_lookup_over_federation.
	FederationDeviceNames bool
	// FederationRequestTimeout bounds a whole outbound request, key
	// fetches included (--federation-request-timeout).
	FederationRequestTimeout time.Duration
	// FederationInflightBytes bounds unverified federation bodies being
	// read at once (--federation-inflight-bytes).
	FederationInflightBytes int64
}

// Defaults returns the configuration with every default applied.
func Defaults() Config {
	return Config{
		Listen:        DefaultListen,
		MetricsListen: DefaultMetricsListen,
		DatabaseURL:   DefaultDatabaseURL,
		ServerName:    DefaultServerName,
		SigningKey:    DefaultSigningKey,
		Migrate:       true,
		LogLevel:      slog.LevelInfo,
		LogFormat:     "auto",
		InboxMaxAge:   DefaultInboxMaxAge,
		TxnRetention:  24 * time.Hour,
		SendBurst:     DefaultSendBurst,

		KeyRequestRateLimit: inbox.DefaultKeyRequestRate,
		KeyRequestBurst:     inbox.DefaultKeyRequestBurst,
		ShutdownTimeout:     DefaultShutdownTimeout,
		ParkLongPolls:       true,
		DatabaseTimeout:     DefaultDatabaseTimeout,

		RequestBodyTimeout: DefaultRequestBodyTimeout,

		FederationOutbox:     DefaultFederationOutbox,
		FederationMessageTTL: DefaultFederationMessageTTL,
		FederationLeaseTTL:   DefaultFederationLeaseTTL,
		FederationBackoffMin: DefaultFederationBackoffMin,
		FederationBackoffMax: DefaultFederationBackoffMax,

		FederationRequestTimeout: matrixfed.DefaultRequestTimeout,
		FederationInflightBytes:  httpapi.DefaultMaxInflightFederationBytes,
	}
}

// Validate checks the configuration, naming the setting that is wrong.
func (c Config) Validate() error {
	var errs []error
	if _, err := storage.Kind(c.DatabaseURL); err != nil {
		errs = append(errs, err)
	}
	if err := matrix.ValidateServerName(c.ServerName); err != nil {
		errs = append(errs, fmt.Errorf("--server-name: %w", err))
	}
	if c.InternalSecret != "" && slices.Contains(placeholderSecrets, strings.ToLower(strings.TrimSpace(c.InternalSecret))) {
		errs = append(errs, fmt.Errorf("--internal-secret %q is a placeholder, and whoever knows it can create devices and tokens: "+
			"set a random secret (e.g. TODEVICED_INTERNAL_SECRET=$(openssl rand -hex 32)), or leave it empty to turn the internal API off",
			c.InternalSecret))
	}
	if c.AdminSecret != "" && slices.Contains(placeholderSecrets, strings.ToLower(strings.TrimSpace(c.AdminSecret))) {
		errs = append(errs, fmt.Errorf("--admin-secret %q is a placeholder, and whoever knows it can purge inboxes and federation queues: "+
			"set a random secret (e.g. TODEVICED_ADMIN_SECRET=$(openssl rand -hex 32)), or leave it empty to turn the admin API off",
			c.AdminSecret))
	}
	if c.AdminSecret != "" && c.AdminSecret == c.InternalSecret {
		errs = append(errs, errors.New("--admin-secret must differ from --internal-secret: the homeserver holds the internal one"))
	}
	if c.Listen == "" {
		errs = append(errs, errors.New("--listen must not be empty"))
	}
	if c.TxnRetention < 24*time.Hour {
		errs = append(errs, errors.New("--txn-retention must be at least 24h (clients retry for that long)"))
	}
	if c.InboxMaxMessages < 0 {
		errs = append(errs, errors.New("--inbox-max-messages must not be negative (0 is no bound)"))
	}
	if c.InboxMaxAge < 0 {
		errs = append(errs, errors.New("--inbox-max-age must not be negative (0 keeps messages forever)"))
	}
	if c.SendRateLimit < 0 || c.SendBurst < 0 {
		errs = append(errs, errors.New("--send-rate-limit and --send-burst must not be negative"))
	}
	if c.KeyRequestRateLimit < 0 || c.KeyRequestBurst < 0 {
		errs = append(errs, errors.New("--key-request-rate-limit and --key-request-burst must not be negative"))
	}
	if c.RequestBodyTimeout <= 0 {
		errs = append(errs, errors.New("--request-body-timeout must be positive"))
	}
	if c.DatabaseTimeout <= 0 {
		errs = append(errs, errors.New("--database-timeout must be positive"))
	}
	if c.DatabaseMaxConns < 0 {
		errs = append(errs, errors.New("--database-max-conns must not be negative"))
	}
	switch c.LogFormat {
	case "auto", "json", "text":
	default:
		errs = append(errs, fmt.Errorf("--log-format %q: want auto, json or text", c.LogFormat))
	}
	switch c.FederationOutbox {
	case FederationOutboxSend:
	case FederationOutboxFeed:
		if c.FederationEnabled() && c.InternalSecret == "" {
			errs = append(errs, errors.New("--federation-outbox=feed needs --internal-secret: the homeserver pulls the outbox through the internal API"))
		}
	default:
		errs = append(errs, fmt.Errorf("--federation-outbox %q: want %s or %s", c.FederationOutbox, FederationOutboxSend, FederationOutboxFeed))
	}
	if c.FederationMessageTTL < time.Minute {
		errs = append(errs, errors.New("--federation-message-ttl must be at least 1m"))
	}
	if c.FederationLeaseTTL < time.Second {
		errs = append(errs, errors.New("--federation-lease-ttl must be at least 1s"))
	}
	if c.FederationBackoffMin <= 0 {
		errs = append(errs, errors.New("--federation-backoff-min must be positive"))
	}
	if c.FederationRequestTimeout <= 0 {
		errs = append(errs, errors.New("--federation-request-timeout must be positive"))
	}
	if c.FederationInflightBytes < 1<<20 {
		errs = append(errs, errors.New("--federation-inflight-bytes must be at least 1 MiB"))
	}
	if c.FederationBackoffMax < c.FederationBackoffMin {
		errs = append(errs, errors.New("--federation-backoff-max must not be below --federation-backoff-min"))
	}
	if c.UpstreamAuthURL != "" && !strings.HasPrefix(c.UpstreamAuthURL, "http://") && !strings.HasPrefix(c.UpstreamAuthURL, "https://") {
		errs = append(errs, fmt.Errorf("--upstream-auth-url %q: want the homeserver's http:// or https:// base URL", c.UpstreamAuthURL))
	}
	for name, u := range c.FederationDestinations {
		if err := matrix.ValidateServerName(name); err != nil {
			errs = append(errs, fmt.Errorf("--federation-destinations: %w", err))
		}
		if !strings.HasPrefix(u, "http://") && !strings.HasPrefix(u, "https://") {
			errs = append(errs, fmt.Errorf("--federation-destinations: %s=%s: want an http:// or https:// URL", name, u))
		}
	}
	return errors.Join(errs...)
}

// FederationEnabled reports whether this server talks to other servers: not
// while it is called localhost, a name no other server could reach.
func (c Config) FederationEnabled() bool { return c.ServerName != "localhost" }

// LogAttrs describes the effective configuration for the start-up log line,
// without secrets.
func (c Config) LogAttrs() []any {
	return []any{
		"listen", c.Listen, "metrics_listen", c.MetricsListen,
		"database_url", storage.Redact(c.DatabaseURL),
		"database_timeout", c.DatabaseTimeout.String(),
		"server_name", c.ServerName,
		"internal_api", c.InternalSecret != "",
		"admin_api", c.AdminSecret != "",
		"upstream_auth", c.UpstreamAuthURL,
		"migrate", c.Migrate,
		"federation", c.FederationEnabled(),
		"federation_outbox", c.FederationOutbox,
		"federation_device_names", c.FederationDeviceNames,
		"park_long_polls", c.ParkLongPolls,
		"federation_message_ttl", c.FederationMessageTTL.String(),
		"inbox_max_age", c.InboxMaxAge.String(), "inbox_max_messages", c.InboxMaxMessages,
		"log_level", c.LogLevel.String(),
	}
}
