package server

import (
	"context"
	"fmt"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// readyTimeout bounds the readiness check: a database slower than this is as
// good as unreachable to a client.
const readyTimeout = 2 * time.Second

// The metrics listener serves the process's lifecycle to its operators and
// orchestrator: /healthz (the process runs), /readyz (it should get traffic:
// not draining, database reachable and migrated), /metrics and, when
// enabled, pprof. It lives here, with the lifecycle it reports on.

// checkDatabase is the readiness check: the database answers and every
// migration this binary knows is applied (two cheap queries). Only the
// database decides readiness. The wake-up listener does not: polling covers
// for it, and a LISTEN flap must not take every replica out of service at
// once; todeviced_listener_up and its alert watch it instead.
func (s *Server) checkDatabase(parent context.Context) error {
	ctx, cancel := context.WithTimeout(parent, readyTimeout)
	defer cancel()
	err := s.backend.Ping(ctx)
	if err != nil {
		err = fmt.Errorf("database unreachable: %w", err)
	} else if n, perr := s.backend.Pending(ctx); perr != nil {
		err = fmt.Errorf("reading migration state: %w", perr)
	} else if n > 0 {
		err = fmt.Errorf("%d migration(s) pending: run todeviced migrate", n)
	}
	if err != nil {
		if parent.Err() == nil { // a prober that gave up says nothing about the database
			s.m.dbReady.Set(0)
		}
		return err
	}
	s.m.dbReady.Set(1)
	return nil
}

func (s *Server) metricsMux() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.registry, promhttp.HandlerOpts{}))
	if s.cfg.Pprof {
		// Profiling on the metrics listener only, never on the API: it is
		// for operators chasing CPU or memory, and exposes internals.
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		if s.draining.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte("shutting down\n"))
			return
		}
		if err := s.checkDatabase(r.Context()); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = fmt.Fprintf(w, "not ready: %v\n", err)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	return mux
}
