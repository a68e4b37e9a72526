package server

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/todeviced/todeviced/internal/mxid"
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
	// DefaultShutdownTimeout is how long in-flight requests get to finish.
	DefaultShutdownTimeout = 15 * time.Second
)

// Config is the whole configuration of a todeviced process.
type Config struct {
	Listen                 string
	MetricsListen          string
	DatabaseURL            string
	DatabaseDirectURL      string
	DatabaseMaxConns       int
	ServerName             string
	InternalSecret         string
	SigningKey             string
	Migrate                bool
	FederationDestinations map[string]string
	FederationTLSInsecure  bool
	LogLevel               slog.Level
	LogFormat              string
	InboxMaxAge            time.Duration
	TxnRetention           time.Duration
	MaxSendBytes           int64
	ShutdownTimeout        time.Duration
}

// Defaults returns the configuration with every default applied.
func Defaults() Config {
	return Config{
		Listen:          DefaultListen,
		MetricsListen:   DefaultMetricsListen,
		DatabaseURL:     DefaultDatabaseURL,
		ServerName:      DefaultServerName,
		SigningKey:      DefaultSigningKey,
		Migrate:         true,
		LogLevel:        slog.LevelInfo,
		LogFormat:       "auto",
		InboxMaxAge:     DefaultInboxMaxAge,
		TxnRetention:    24 * time.Hour,
		ShutdownTimeout: DefaultShutdownTimeout,
	}
}

// Validate checks the configuration, naming the setting that is wrong.
func (c Config) Validate() error {
	var errs []error
	if _, err := storage.Kind(c.DatabaseURL); err != nil {
		errs = append(errs, err)
	}
	if err := mxid.ValidateServerName(c.ServerName); err != nil {
		errs = append(errs, fmt.Errorf("--server-name: %w", err))
	}
	if c.Listen == "" {
		errs = append(errs, errors.New("--listen must not be empty"))
	}
	if c.TxnRetention < 24*time.Hour {
		errs = append(errs, errors.New("--txn-retention must be at least 24h (clients retry for that long)"))
	}
	if c.InboxMaxAge < 0 {
		errs = append(errs, errors.New("--inbox-max-age must not be negative (0 keeps messages forever)"))
	}
	if c.DatabaseMaxConns < 0 {
		errs = append(errs, errors.New("--database-max-conns must not be negative"))
	}
	switch c.LogFormat {
	case "auto", "json", "text":
	default:
		errs = append(errs, fmt.Errorf("--log-format %q: want auto, json or text", c.LogFormat))
	}
	for name, u := range c.FederationDestinations {
		if err := mxid.ValidateServerName(name); err != nil {
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
		"server_name", c.ServerName,
		"internal_api", c.InternalSecret != "",
		"migrate", c.Migrate,
		"federation", c.FederationEnabled(),
		"inbox_max_age", c.InboxMaxAge.String(),
		"log_level", c.LogLevel.String(),
	}
}
