package loadgen

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"time"
)

// csvHeader names the columns of the per-second samples. Counts are per
// sample interval (normally one second); latencies are of the messages
// first received in it.
const csvHeader = "elapsed_s,phase,sends,messages_sent,delivered,pending,in_flight_sends,send_errors,sync_errors,latency_p50_ms,latency_p95_ms,latency_p99_ms,latency_max_ms\n"

// sample is the counters at one instant.
type sample struct {
	at                 time.Time
	sends, delivered   int64
	sendErrs, syncErrs int64
	expected, inFlight int64
	lat                *HistSnapshot
}

func (r *Runner) sample() sample {
	st := &r.st
	return sample{
		at: time.Now(), sends: st.sendsOK.Load(), delivered: st.delivered.Load(),
		sendErrs: st.sendErrors.Load(), syncErrs: st.syncErrors.Load(),
		expected: st.expected.Load(), inFlight: st.inFlight.Load(),
		lat: st.latency.Snapshot(),
	}
}

// progress samples the counters every second until ctx ends: a CSV row
// per second, and the progress line (rewritten every second on a terminal,
// a line every ProgressInterval otherwise, as logs want it).
func (r *Runner) progress(ctx context.Context) {
	cfg := r.cfg
	if cfg.CSV != nil {
		_, _ = io.WriteString(cfg.CSV, csvHeader)
	}
	prev := r.sample()
	lastLine := prev
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var buf []byte
	for {
		select {
		case <-ctx.Done():
			cur := r.sample()
			if cfg.CSV != nil && cur.at.Sub(prev.at) > 100*time.Millisecond {
				_, _ = cfg.CSV.Write(r.csvRow(buf[:0], prev, cur))
			}
			if cfg.Progress != nil && (cfg.ProgressTTY || cur.sends != lastLine.sends || cur.delivered != lastLine.delivered) {
				line := r.progressLine(lastLine, cur)
				if cfg.ProgressTTY {
					fmt.Fprintf(cfg.Progress, "\r\033[K%s\n", line)
				} else {
					fmt.Fprintln(cfg.Progress, line)
				}
			}
			return
		case <-tick.C:
		}
		cur := r.sample()
		if cfg.CSV != nil {
			buf = r.csvRow(buf[:0], prev, cur)
			_, _ = cfg.CSV.Write(buf)
		}
		if cfg.Progress != nil {
			if cfg.ProgressTTY {
				fmt.Fprintf(cfg.Progress, "\r\033[K%s", r.progressLine(prev, cur))
			} else if cur.at.Sub(lastLine.at) >= cfg.ProgressInterval-50*time.Millisecond {
				fmt.Fprintln(cfg.Progress, r.progressLine(lastLine, cur))
				lastLine = cur
			}
		}
		prev = cur
	}
}

func (r *Runner) phase() string { s, _ := r.st.phase.Load().(string); return s }

// progressLine describes the run now, with rates over (prev, cur].
func (r *Runner) progressLine(prev, cur sample) string {
	secs := cur.at.Sub(prev.at).Seconds()
	rate := func(a, b int64) float64 {
		if secs <= 0 {
			return 0
		}
		return float64(b-a) / secs
	}
	lat := cur.lat.Sub(prev.lat)
	return fmt.Sprintf("[%5.0fs %-13s] sends %d (%.0f/s)  delivered %d (%.0f/s)  pending %d  in-flight %d  p99 %sms  errors send %d sync %d",
		cur.at.Sub(r.st.start).Seconds(), r.phase(),
		cur.sends, rate(prev.sends, cur.sends),
		cur.delivered, rate(prev.delivered, cur.delivered),
		max(cur.expected-cur.delivered, 0), cur.inFlight,
		Millis(lat.Quantile(0.99)), cur.sendErrs, cur.syncErrs)
}

func (r *Runner) csvRow(b []byte, prev, cur sample) []byte {
	lat := cur.lat.Sub(prev.lat)
	b = strconv.AppendFloat(b, cur.at.Sub(r.st.start).Seconds(), 'f', 1, 64)
	b = append(b, ',')
	b = append(b, r.phase()...)
	for _, n := range []int64{
		cur.sends - prev.sends, (cur.sends - prev.sends) * int64(r.cfg.Fanout), cur.delivered - prev.delivered,
		max(cur.expected-cur.delivered, 0), cur.inFlight, cur.sendErrs - prev.sendErrs, cur.syncErrs - prev.syncErrs,
	} {
		b = append(b, ',')
		b = strconv.AppendInt(b, n, 10)
	}
	for _, d := range []time.Duration{lat.Quantile(0.5), lat.Quantile(0.95), lat.Quantile(0.99), lat.MaxDuration()} {
		b = append(b, ',')
		b = append(b, Millis(d).String()...)
	}
	return append(b, '\n')
}
