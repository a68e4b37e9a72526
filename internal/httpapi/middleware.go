package httpapi

import (
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/todeviced/todeviced/internal/matrix"
)

// Metrics are the HTTP layer's Prometheus metrics.
type Metrics struct {
	Requests *prometheus.CounterVec
	Duration *prometheus.HistogramVec
	InFlight prometheus.Gauge

	observers observerCache
}

// observerCache keeps the children of Requests and Duration that requests
// have used, by route, method and status: WithLabelValues hashes its
// labels and takes the vector's lock on every call, and the status's label
// was a new string each time, per request. A map lookup under a read lock
// is what remains. It stops growing at maxCachedObservers (the method is
// the client's to choose); requests beyond it look their children up as
// before.
type observerCache struct {
	mu sync.RWMutex
	m  map[observerKey]requestObservers
}

type observerKey struct {
	route, method string
	status        int
}

type requestObservers struct {
	requests prometheus.Counter
	duration prometheus.Observer
}

const maxCachedObservers = 1024

func (m *Metrics) observersFor(route, method string, status int) requestObservers {
	k := observerKey{route, method, status}
	c := &m.observers
	c.mu.RLock()
	o, ok := c.m[k]
	c.mu.RUnlock()
	if ok {
		return o
	}
	o = requestObservers{
		requests: m.Requests.WithLabelValues(route, method, strconv.Itoa(status)),
		duration: m.Duration.WithLabelValues(route, method),
	}
	c.mu.Lock()
	if c.m == nil {
		c.m = map[observerKey]requestObservers{}
	}
	if len(c.m) < maxCachedObservers {
		c.m[k] = o
	}
	c.mu.Unlock()
	return o
}

// NewMetrics creates the HTTP metrics and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "todeviced_http_requests_total",
			Help: "HTTP requests answered, by route pattern, method and status code.",
		}, []string{"route", "method", "code"}),
		Duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "todeviced_http_request_duration_seconds",
			Help:    "Time to answer HTTP requests (long-polls included), by route pattern and method.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"route", "method"}),
		InFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "todeviced_http_requests_in_flight",
			Help: "HTTP requests being served, long-polls included.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.Requests, m.Duration, m.InFlight)
	}
	return m
}

// statusRecorder remembers the status a handler wrote, and what observe
// needs to record the request when a parked long-poll answers after its
// handler has returned (park.go).
type statusRecorder struct {
	http.ResponseWriter
	status int
	bytes  int

	log   *slog.Logger
	m     *Metrics
	start time.Time
	// detached is set when the handler parked the request: observe then
	// leaves the recording to finishDetached. route is the route pattern
	// taken before the router reused its context.
	detached bool
	route    string
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	n, err := s.ResponseWriter.Write(b)
	s.bytes += n
	return n, err
}

func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// routePattern is the chi route that matched ("unmatched" for 404s), the
// only path form used in logs and metric labels: it never holds ids or tokens.
func routePattern(r *http.Request) string {
	if rc := chi.RouteContext(r.Context()); rc != nil {
		if p := rc.RoutePattern(); p != "" {
			return p
		}
	}
	return "unmatched"
}

// observe logs one line per request and records the request metrics. It
// also turns a panic into a 500 so one bad request cannot kill the server.
func observe(log *slog.Logger, m *Metrics) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			rec := &statusRecorder{ResponseWriter: w, log: log, m: m, start: time.Now()}
			m.InFlight.Inc()
			defer func() {
				if p := recover(); p != nil {
					if p == http.ErrAbortHandler {
						m.InFlight.Dec()
						panic(p)
					}
					log.ErrorContext(r.Context(), "handler panicked", "route", routePattern(r), "panic", p)
					if rec.status == 0 && !rec.detached {
						writeError(rec, r, log, matrix.Errorf(matrix.Unknown, "Internal server error."))
					}
				}
				if rec.detached {
					return // the parked poll records itself when it answers
				}
				status := rec.status
				if status == 0 {
					// The client left during a long-poll and nothing was written.
					status = 499
				}
				rec.record(r, routePattern(r), status, rec.bytes)
			}()
			next.ServeHTTP(rec, r)
		})
	}
}

// detach hands the recording of the request to finishDetached. The
// response writer is dropped: net/http's holds the connection's buffers,
// which a parked request must not keep alive.
func (s *statusRecorder) detach(route string) {
	s.detached, s.route, s.ResponseWriter = true, route, nil
}

// finishDetached records a parked request once it has answered.
func (s *statusRecorder) finishDetached(r *http.Request, status, bytes int) {
	s.record(r, s.route, status, bytes)
}

func (s *statusRecorder) record(r *http.Request, route string, status, bytes int) {
	s.m.InFlight.Dec()
	d := time.Since(s.start)
	o := s.m.observersFor(route, r.Method, status)
	o.requests.Inc()
	o.duration.Observe(d.Seconds())
	level := slog.LevelInfo
	if status >= 500 {
		level = slog.LevelError
	}
	// Asked first: the arguments are boxed (allocated) before Log can find
	// the line is not wanted, as at --log-level warn.
	if s.log.Enabled(r.Context(), level) {
		s.log.Log(r.Context(), level, "request", "method", r.Method, "route", route, "status", status,
			"duration_ms", float64(d.Microseconds())/1000, "bytes", bytes)
	}
}

// cors lets browser clients (Element Web and the like) call the client API,
// as the spec's CORS section asks of homeservers.
func cors(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Access-Control-Allow-Origin", "*")
		h.Set("Access-Control-Allow-Methods", "GET, POST, PUT, DELETE, OPTIONS")
		h.Set("Access-Control-Allow-Headers", "X-Requested-With, Content-Type, Authorization")
		if r.Method == http.MethodOptions {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// escapedRouting makes chi match on the escaped path, so an id holding an
// escaped '/' stays one path parameter; handlers unescape parameters.
func escapedRouting(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if rc := chi.RouteContext(r.Context()); rc != nil {
			rc.RoutePath = r.URL.EscapedPath()
		}
		next.ServeHTTP(w, r)
	})
}

// bodyDeadline gives a request that has a body until d to deliver it. The
// server's own deadlines cover only the headers: without this, a client
// sending a byte a second holds a connection and a goroutine for as long as
// it likes, before authentication has refused it or after (the server reads
// what a handler left unread, to reuse the connection). A request without a
// body — every long-poll — is untouched.
//
// The deadline is the connection's read deadline on HTTP/1 and the stream's
// on HTTP/2. It ends with the body: on HTTP/1 the server lifts it itself
// once the body has been read to its end (before it starts watching the
// connection for a client that leaves), and on HTTP/2 it only ever applies
// to reads of the body. So a handler still at work when it passes is never
// cancelled by it.
func bodyDeadline(d time.Duration) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Body != nil && r.Body != http.NoBody {
				_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(d))
			}
			next.ServeHTTP(w, r)
		})
	}
}
