// Package server wires todeviced together: it opens the backend, builds the
// domain services and the HTTP handlers, runs the background jobs, and serves
// until its context ends, then shuts down gracefully. cmd/todeviced, tests
// and the load generator all start todeviced through it.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/todeviced/todeviced/internal/devicelists"
	"github.com/todeviced/todeviced/internal/devicesync"
	"github.com/todeviced/todeviced/internal/federation"
	"github.com/todeviced/todeviced/internal/httpapi"
	"github.com/todeviced/todeviced/internal/inbox"
	"github.com/todeviced/todeviced/internal/matrixfed"
	"github.com/todeviced/todeviced/internal/storage"
	"github.com/todeviced/todeviced/internal/wakeup"
)

// http2MaxStreams lets one HTTP/2 connection carry this many requests, most
// of them long-polls waiting.
const http2MaxStreams = 1000

// Server is one todeviced process.
type Server struct {
	cfg     Config
	log     *slog.Logger
	backend storage.Backend
	hub     *wakeup.Hub
	// parking holds HTTP/1.1 long-polls waiting without a goroutine (nil
	// with --park-long-polls=false).
	parking  *httpapi.Parking
	inbox    *inbox.Service
	devices  *devicelists.Service
	devsync  *devicesync.Service
	registry *prometheus.Registry
	m        *serverMetrics
	handler  http.Handler
	metrics  http.Handler

	// headerTimeout and idleTimeout are the API server's
	// (Options.ReadHeaderTimeout, Options.IdleTimeout).
	headerTimeout, idleTimeout time.Duration

	fedMetrics  *federation.Metrics
	housekeeper *federation.Housekeeper
	sender      *federation.Sender      // nil unless federation sends itself
	client      *matrixfed.Client       // nil while federation is off
	deviceFed   *devicelists.Federation // nil while federation is off

	purgeKick chan struct{}
	stop      context.CancelFunc
	jobs      sync.WaitGroup
	// draining is set when shutdown begins; /readyz then answers 503.
	draining atomic.Bool
}

// Options are for tests and embedders.
type Options struct {
	// InboxHooks are passed to the inbox store.
	InboxHooks inbox.Hooks
	// Registry receives the metrics (a fresh one when nil).
	Registry *prometheus.Registry
	// FederationSweepInterval overrides the sender's sweep interval.
	FederationSweepInterval time.Duration
	// Parking overrides the parking of HTTP/1.1 syncs' settings (tests).
	Parking httpapi.ParkingConfig
	// Version is reported by todeviced_build_info ("dev" when empty) and to
	// other servers.
	Version string
	// ReadHeaderTimeout and IdleTimeout override the API server's (tests;
	// zero: readHeaderTimeout and idleTimeout).
	ReadHeaderTimeout, IdleTimeout time.Duration
}

// The API server's timeouts: a request's header must arrive within
// readHeaderTimeout (counted from the connection's start on a new one, from
// the request's first byte on a kept-alive or handed-back one), and a
// kept-alive connection may wait idleTimeout for its next request.
const (
	readHeaderTimeout = 10 * time.Second
	idleTimeout       = 2 * time.Minute
)

// New opens the database (migrating it when configured) and builds the
// server. Call Start to run background jobs, then Serve or use Handler.
func New(ctx context.Context, cfg Config, log *slog.Logger, opts Options) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	reg := opts.Registry
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	m := newMetrics(reg, opts.Version, cfg.DatabaseURL)
	m.inboxMaxAge.Set(cfg.InboxMaxAge.Seconds())
	s := &Server{cfg: cfg, log: log, registry: reg, m: m, purgeKick: make(chan struct{}, 1)}
	s.hub = wakeup.NewHub()
	s.hub.OnWaitersChanged = func(n int) { m.longPolls.Set(float64(n)) }

	backend, err := storage.Open(ctx, storage.Options{
		URL: cfg.DatabaseURL, DirectURL: cfg.DatabaseDirectURL, MaxConns: int32(cfg.DatabaseMaxConns),
		Migrate: cfg.Migrate, Hub: s.hub, Logger: log, InboxHooks: opts.InboxHooks, CallTimeout: cfg.DatabaseTimeout,
		// This process serves: on SQLite no second server may share the file.
		Exclusive: true,
		OnListenerState: func(up bool) {
			if up {
				m.listenerUp.Set(1)
			} else {
				m.listenerUp.Set(0)
			}
		},
	})
	if err != nil {
		return nil, fmt.Errorf("opening database: %w", err)
	}
	s.backend = backend
	if ps, ok := backend.(storage.PoolStatser); ok {
		reg.MustRegister(storage.NewPoolCollector(ps))
	}
	if sg, ok := backend.(storage.SendGrouper); ok {
		reg.MustRegister(storage.NewSendGroupCollectors(sg)...)
	}
	if backend.Kind() == "sqlite" {
		m.listenerUp.Set(1) // in-process wake-ups cannot disconnect
	}
	s.inbox = inbox.New(inbox.Config{
		ServerName: cfg.ServerName, Store: backend.Inbox(), Metrics: inbox.NewMetrics(reg), Logger: log,
		TxnRetention: cfg.TxnRetention, MaxAge: cfg.InboxMaxAge, MaxMessages: cfg.InboxMaxMessages,
		KeyRequestRate: cfg.KeyRequestRateLimit, KeyRequestBurst: cfg.KeyRequestBurst,
		DeviceExists: func(ctx context.Context, userID, deviceID string) (bool, error) {
			_, err := s.devices.Device(ctx, userID, deviceID)
			if errors.Is(err, devicelists.ErrNotFound) {
				return false, nil
			}
			return err == nil, err
		},
	})
	s.devices = devicelists.New(backend.Devices(), cfg.ServerName, log, devicelists.NewMetrics(reg))
	s.devices.SetFederationDeviceNames(cfg.FederationDeviceNames)
	if cfg.UpstreamAuthURL != "" {
		s.devices.SetUpstream(devicelists.NewUpstream(cfg.UpstreamAuthURL, nil, nil))
	}
	s.fedMetrics = federation.NewMetrics(reg)
	s.housekeeper = federation.NewHousekeeper(federation.HousekeeperConfig{
		Store: backend.Federation(), Outbox: toDeviceOutbox{backend.Inbox()}, More: []federation.Outbox{deviceListOutbox{backend.Devices()}},
		Metrics: s.fedMetrics, Logger: log, MessageTTL: cfg.FederationMessageTTL,
	})
	var fed *httpapi.FederationConfig
	if cfg.FederationEnabled() {
		if fed, err = s.newFederation(opts); err != nil {
			backend.Close()
			return nil, err
		}
	}
	var adminFederation federation.Store
	var adminRetryNow func(string)
	var adminKickResync func()
	if s.deviceFed != nil {
		adminKickResync = s.deviceFed.Kick
	}
	if fed != nil {
		adminFederation = backend.Federation()
		if s.sender != nil {
			adminRetryNow = s.sender.RetryNow
		}
	}
	if opts.ReadHeaderTimeout <= 0 {
		opts.ReadHeaderTimeout = readHeaderTimeout
	}
	if opts.IdleTimeout <= 0 {
		opts.IdleTimeout = idleTimeout
	}
	s.headerTimeout, s.idleTimeout = opts.ReadHeaderTimeout, opts.IdleTimeout
	if cfg.ParkLongPolls {
		pc := opts.Parking
		if pc.Idle == 0 {
			pc.Idle = opts.IdleTimeout
		}
		s.parking = httpapi.NewParking(log, s.hub, pc)
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "todeviced_http_parked_syncs",
			Help: "HTTP/1.1 syncs whose connection the wake-up hub holds (--park-long-polls): waiting with no goroutine, or queued for a worker.",
		}, func() float64 { return float64(s.parking.Len()) }))
	}
	devsync := devicesync.New(devicesync.Config{Inbox: s.inbox, Devices: s.devices, Hub: s.hub})
	s.devsync = devsync
	for _, c := range []struct {
		result string
		n      func() uint64
	}{
		{"read", func() uint64 { r, _ := devsync.Checks(); return r }},
		{"skipped", func() uint64 { _, k := devsync.Checks(); return k }},
	} {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name:        "todeviced_sync_checks_total",
			Help:        "Checks of /sync and sliding-sync requests: read the store (result=read), or a long-poll's first check skipped because this replica had heard no wake-up of the device since it answered the since the poll brings (result=skipped).",
			ConstLabels: prometheus.Labels{"result": c.result},
		}, func() float64 { return float64(c.n()) }))
	}
	s.handler = httpapi.NewRouter(httpapi.Config{
		Parking:    s.parking,
		ServerName: cfg.ServerName, InternalSecret: cfg.InternalSecret, AdminSecret: cfg.AdminSecret, MaxSendBytes: cfg.MaxSendBytes,
		BodyTimeout: cfg.RequestBodyTimeout,
		SendRate:    cfg.SendRateLimit, SendBurst: cfg.SendBurst,
		Inbox: s.inbox, Devices: s.devices, Logger: log, Metrics: httpapi.NewMetrics(reg),
		Sync:         devsync,
		PurgeDeleted: s.kickPurge, Federation: fed,
		AdminFederation: adminFederation, AdminRetryNow: adminRetryNow, AdminKickResync: adminKickResync,
	})
	s.metrics = s.metricsMux()
	return s, nil
}

// newFederation builds the federation side: the signing key (created on
// first start), discovery, the signed client, key fetching, the receiver,
// and the sender or the outbox feed.
func (s *Server) newFederation(opts Options) (*httpapi.FederationConfig, error) {
	cfg, log := s.cfg, s.log
	key, created, err := matrixfed.LoadOrCreateSigningKey(cfg.SigningKey)
	if err != nil {
		return nil, fmt.Errorf("--signing-key: %w", err)
	}
	if created {
		log.Info("created a new signing key", "path", cfg.SigningKey, "key_id", key.ServerKeyID)
	}
	res, err := matrixfed.NewResolver(matrixfed.ResolverOptions{Overrides: cfg.FederationDestinations, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("--federation-destinations: %w", err)
	}
	client, err := matrixfed.NewClient(matrixfed.ClientOptions{
		ServerName: cfg.ServerName, Key: key, Resolver: res, InsecureSkipVerify: cfg.FederationTLSInsecure,
		UserAgent: "todeviced/" + opts.Version, RequestTimeout: cfg.FederationRequestTimeout,
	})
	if err != nil {
		return nil, err
	}
	s.client = client
	backoff := matrixfed.Backoff{Min: cfg.FederationBackoffMin, Max: cfg.FederationBackoffMax}
	// Device lists: remote users' keys are queried, their updates taken and
	// their lists resynced through the signed client.
	s.deviceFed = s.devices.EnableFederation(devicelists.FederationConfig{
		Remote: deviceListRemote{client}, RetryDelay: backoff.WithDefaults().Delay,
	})
	fed := &httpapi.FederationConfig{
		Receiver: federation.NewReceiver(federation.ReceiverConfig{
			ServerName: cfg.ServerName, Store: s.backend.Federation(), Inbox: toDeviceInbox{cfg.ServerName, s.inbox},
			DeviceLists: s.deviceFed, Metrics: s.fedMetrics, Logger: log,
		}),
		Keys: matrixfed.NewKeyFetcher(client, matrixfed.KeyFetcherOptions{
			Logger: log, FetchTimeout: min(matrixfed.DefaultKeyFetchTimeout, cfg.FederationRequestTimeout),
		}),
		MaxInflightBytes: cfg.FederationInflightBytes,
		KeyResponse:      matrixfed.NewKeyResponseCache(cfg.ServerName, key).Response,
		Version:          opts.Version,
	}
	// The device-list outbox comes first: its reserved slots are taken
	// before to-device messages fill the rest (also in a small feed pull).
	sources := []federation.SourceQuota{
		{Source: deviceListOutbox{s.backend.Devices()}, Quota: federation.ReservedDeviceListEDUs},
		{Source: toDeviceOutbox{s.backend.Inbox()}, Quota: federation.ToDeviceQuota},
	}
	switch cfg.FederationOutbox {
	case FederationOutboxFeed:
		if fed.Feed, err = federation.NewFeed(s.backend.Epoch(), sources, s.fedMetrics); err != nil {
			return nil, err
		}
	default:
		s.sender, err = federation.NewSender(federation.SenderConfig{
			ServerName: cfg.ServerName, Store: s.backend.Federation(), Sources: sources,
			Client: client, Hub: s.hub, Metrics: s.fedMetrics, Logger: log,
			LeaseTTL:      cfg.FederationLeaseTTL,
			Backoff:       backoff,
			MessageTTL:    cfg.FederationMessageTTL,
			SweepInterval: opts.FederationSweepInterval,
		})
		if err != nil {
			return nil, err
		}
	}
	return fed, nil
}

// Handler is the client, federation and internal API.
func (s *Server) Handler() http.Handler { return s.handler }

// MetricsHandler serves /metrics, /healthz and /readyz.
func (s *Server) MetricsHandler() http.Handler { return s.metrics }

// Hub is the wake-up hub (tests watch its waiters).
func (s *Server) Hub() *wakeup.Hub { return s.hub }

// Parking holds the parked HTTP/1.1 long-polls (nil with
// --park-long-polls=false).
func (s *Server) Parking() *httpapi.Parking { return s.parking }

// Inbox is the inbox service.
func (s *Server) Inbox() *inbox.Service { return s.inbox }

// Devices is the device registry.
func (s *Server) Devices() *devicelists.Service { return s.devices }

// SyncChecks is devicesync.Service.Checks: sync checks that read the
// store, and long-polls' first checks skipped.
func (s *Server) SyncChecks() (read, skipped uint64) { return s.devsync.Checks() }

// Backend is the open database.
func (s *Server) Backend() storage.Backend { return s.backend }

// Registry holds the server's metrics.
func (s *Server) Registry() *prometheus.Registry { return s.registry }

// Close answers waiting long-polls, stops the background jobs and closes
// the database.
func (s *Server) Close() {
	if s.parking != nil {
		s.parking.Close()
	}
	s.hub.Close()
	if s.stop != nil {
		s.stop()
		s.jobs.Wait()
	}
	if s.client != nil {
		s.client.CloseIdleConnections()
	}
	s.backend.Close()
}

// Serve listens on the configured addresses until ctx ends, then shuts down
// gracefully: long-polls are answered at once (empty), in-flight requests get
// ShutdownTimeout to finish, and the database is closed.
func (s *Server) Serve(ctx context.Context) error {
	apiLn, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("--listen %s: %w", s.cfg.Listen, err)
	}
	var metricsLn net.Listener
	if s.cfg.MetricsListen != "" {
		if metricsLn, err = net.Listen("tcp", s.cfg.MetricsListen); err != nil {
			apiLn.Close()
			return fmt.Errorf("--metrics-listen %s: %w", s.cfg.MetricsListen, err)
		}
	}
	return s.ServeListeners(ctx, apiLn, metricsLn)
}

// ServeListeners is Serve on listeners the caller opened (nil metrics
// listener: no metrics server).
func (s *Server) ServeListeners(ctx context.Context, apiLn, metricsLn net.Listener) error {
	s.Start(ctx)
	api := &http.Server{Handler: s.handler, ReadHeaderTimeout: s.headerTimeout, IdleTimeout: s.idleTimeout,
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelWarn)}
	// HTTP/1.1 and, for a reverse proxy that speaks it upstream (Envoy,
	// Caddy, HAProxy), HTTP/2 without TLS (prior knowledge): many long-polls
	// then share a few connections. Waiting HTTP/1.1 syncs are parked
	// (httpapi.Parking) and cost less than an h2c stream's goroutine.
	api.Protocols = new(http.Protocols)
	api.Protocols.SetHTTP1(true)
	api.Protocols.SetUnencryptedHTTP2(true)
	api.HTTP2 = &http.HTTP2Config{MaxConcurrentStreams: http2MaxStreams}
	servers := []*http.Server{api}
	errc := make(chan error, 2)
	if s.parking != nil {
		apiLn = s.parking.Listener(apiLn)
		api.ConnState = s.parking.ConnState
	}
	go func() { errc <- api.Serve(apiLn) }()
	if metricsLn != nil {
		ms := &http.Server{Handler: s.metrics, ReadHeaderTimeout: readHeaderTimeout}
		servers = append(servers, ms)
		go func() { errc <- ms.Serve(metricsLn) }()
	}
	attrs := append(s.cfg.LogAttrs(), "api_addr", apiLn.Addr().String())
	if metricsLn != nil {
		attrs = append(attrs, "metrics_addr", metricsLn.Addr().String())
	}
	s.log.Info("todeviced serving", attrs...)

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
	}
	s.log.Info("shutting down")
	// /readyz fails from now on so load balancers stop sending new requests,
	// while the metrics listener itself stays up until the API has drained
	// (servers[0] shuts down first), so the last moments can be scraped.
	s.draining.Store(true)
	// Long-polls answer now, empty, so their clients come back elsewhere
	// (parked ones close their connection after the answer).
	if s.parking != nil {
		s.parking.Close()
	}
	s.hub.Close()
	sctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	defer cancel()
	if s.parking != nil {
		if err := s.parking.Drain(sctx); err != nil {
			s.log.Warn("parked long-polls did not answer before the shutdown deadline", "err", err)
		}
		// Connections handed back after earlier answers and idle since:
		// net/http would wait five seconds for them.
		s.parking.CloseFresh()
	}
	for _, srv := range servers {
		if err := srv.Shutdown(sctx); err != nil {
			s.log.Warn("in-flight requests did not finish before the shutdown deadline", "err", err)
			srv.Close()
		}
	}
	s.Close()
	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) {
		return serveErr
	}
	return nil
}
