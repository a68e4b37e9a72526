package loadgen

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// Report is the outcome of a run; --json prints it as is.
type Report struct {
	Run    string       `json:"run"`
	URL    string       `json:"url"`
	Config ReportConfig `json:"config"`

	// SendSeconds is the sending phase; DrainSeconds the time from its end
	// to the last first delivery.
	SendSeconds  float64 `json:"send_seconds"`
	DrainSeconds float64 `json:"drain_seconds"`
	Drained      bool    `json:"drained"`

	// Sends are confirmed sendToDevice requests; SendsPerSec is over the
	// sending phase.
	Sends        int64   `json:"sends"`
	SendAttempts int64   `json:"send_attempts"`
	SendsPerSec  float64 `json:"sends_per_sec"`
	// MessagesSent are the to-device messages of confirmed sends (Sends ×
	// fan-out).
	MessagesSent       int64   `json:"messages_sent"`
	MessagesSentPerSec float64 `json:"messages_sent_per_sec"`
	// Delivered are distinct messages received; DeliveredPerSec is over the
	// time from the start to the last first delivery.
	Delivered       int64   `json:"delivered"`
	DeliveredPerSec float64 `json:"delivered_per_sec"`
	SyncRequests    int64   `json:"sync_requests"`
	// DroppedResponses were thrown away on purpose (--sync-drop-rate).
	DroppedResponses int64 `json:"dropped_responses"`

	// Latency is from the send's first attempt to the message's first
	// processed receipt; SendLatency is the round trip of the successful
	// sendToDevice attempt.
	Latency     LatencySummary `json:"latency"`
	SendLatency LatencySummary `json:"send_latency"`

	// Errors counts failed requests by "operation: kind".
	Errors   map[string]int64 `json:"errors"`
	Verdict  Verdict          `json:"verdict"`
	Baseline *BaselineReport  `json:"baseline,omitempty"`
}

// ReportConfig is the load the report describes.
type ReportConfig struct {
	Users          int     `json:"users"`
	DevicesPerUser int     `json:"devices_per_user"`
	Devices        int     `json:"devices"`
	Senders        int     `json:"senders"`
	Fanout         int     `json:"fanout"`
	MessageBytes   int     `json:"message_bytes"`
	Rate           float64 `json:"rate"`
	Duration       string  `json:"duration"`
	Messages       int64   `json:"messages"`
	Seed           uint64  `json:"seed"`
	SyncDropRate   float64 `json:"sync_drop_rate,omitempty"`
}

// BaselineReport is the raw database rate of the same rows.
type BaselineReport struct {
	// Sends are COPY statements of Fanout rows each, one per send of the
	// HTTP phase, made by as many connections as there were senders.
	Sends       int64   `json:"sends"`
	Rows        int64   `json:"rows"`
	Seconds     float64 `json:"seconds"`
	SendsPerSec float64 `json:"sends_per_sec"`
	RowsPerSec  float64 `json:"rows_per_sec"`
	// Ratio is todeviced's sends/s over the baseline's.
	Ratio float64 `json:"ratio"`
}

func (r *Runner) report(issueEnd time.Time, drained bool) *Report {
	cfg := r.cfg
	st := &r.st
	sendDur := issueEnd.Sub(st.start)
	rep := &Report{
		Run: r.runID, URL: cfg.URL,
		Config: ReportConfig{
			Users: cfg.Users, DevicesPerUser: cfg.DevicesPerUser, Devices: len(r.devices),
			Senders: cfg.Senders, Fanout: cfg.Fanout, MessageBytes: cfg.MessageBytes, Rate: cfg.Rate,
			Duration: cfg.Duration.String(), Messages: cfg.Messages, Seed: cfg.Seed, SyncDropRate: cfg.SyncDropRate,
		},
		SendSeconds:      sendDur.Seconds(),
		Drained:          drained,
		Sends:            st.sendsOK.Load(),
		SendAttempts:     st.sendAttempts.Load(),
		Delivered:        st.delivered.Load(),
		SyncRequests:     st.syncRequests.Load(),
		DroppedResponses: st.dropped.Load(),
		Latency:          st.latency.Snapshot().Summary(),
		SendLatency:      st.sendLatency.Snapshot().Summary(),
		Errors:           st.errs.snapshot(),
	}
	rep.MessagesSent = rep.Sends * int64(cfg.Fanout)
	if s := sendDur.Seconds(); s > 0 {
		rep.SendsPerSec = float64(rep.Sends) / s
		rep.MessagesSentPerSec = float64(rep.MessagesSent) / s
	}
	if last := st.lastDelivery.Load(); last > 0 {
		active := time.Unix(0, last).Sub(st.start)
		rep.DrainSeconds = max(time.Unix(0, last).Sub(issueEnd).Seconds(), 0)
		if active > 0 {
			rep.DeliveredPerSec = float64(rep.Delivered) / active.Seconds()
		}
	}
	rep.Verdict = Verify(r.logs, r.inboxes, r.deviceName)
	if !drained {
		rep.Verdict.example("the drain timed out before every message arrived")
	}
	return rep
}

// OK says whether the run found no loss, duplicate, reordering or other
// violation.
func (rep *Report) OK() bool { return rep.Verdict.OK }

// WriteTable writes the report for people.
func (rep *Report) WriteTable(w io.Writer) error {
	c := rep.Config
	rate := "unlimited"
	if c.Rate > 0 {
		rate = fmt.Sprintf("%g sends/s", c.Rate)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "todeviced-load run %s against %s\n", rep.Run, rep.URL)
	fmt.Fprintf(&b, "load: %d users × %d devices = %d devices, %d senders, fan-out %d, %d-byte messages, rate %s\n\n",
		c.Users, c.DevicesPerUser, c.Devices, c.Senders, c.Fanout, c.MessageBytes, rate)

	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "\tcount\tper second\tover\t\n")
	fmt.Fprintf(tw, "sends (confirmed)\t%d\t%.1f\t%.1fs sending\t\n", rep.Sends, rep.SendsPerSec, rep.SendSeconds)
	fmt.Fprintf(tw, "messages sent\t%d\t%.1f\t%.1fs sending\t\n", rep.MessagesSent, rep.MessagesSentPerSec, rep.SendSeconds)
	fmt.Fprintf(tw, "messages delivered\t%d\t%.1f\tuntil last delivery\t\n", rep.Delivered, rep.DeliveredPerSec)
	fmt.Fprintf(tw, "send attempts\t%d\t\t\t\n", rep.SendAttempts)
	fmt.Fprintf(tw, "sync requests\t%d\t\t\t\n", rep.SyncRequests)
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(&b, "drain after sending: %.2fs (drained: %v)\n\n", rep.DrainSeconds, rep.Drained)

	tw = tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "latency (ms)\tp50\tp95\tp99\tmax\tcount\t\n")
	for _, row := range []struct {
		name string
		l    LatencySummary
	}{{"send → receive", rep.Latency}, {"sendToDevice", rep.SendLatency}} {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t\n", row.name, row.l.P50, row.l.P95, row.l.P99, row.l.Max, row.l.Count)
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	b.WriteString("\nerrors by kind:")
	if len(rep.Errors) == 0 {
		b.WriteString(" none\n")
	} else {
		b.WriteString("\n")
		tw = tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		for _, k := range slices.Sorted(maps.Keys(rep.Errors)) {
			fmt.Fprintf(tw, "  %s\t%d\n", k, rep.Errors[k])
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}

	if bl := rep.Baseline; bl != nil {
		fmt.Fprintf(&b, "\nbaseline (COPY into device_inbox, %d connections, %d rows per COPY): %d sends in %.2fs = %.1f sends/s, %.1f rows/s\n",
			c.Senders, c.Fanout, bl.Sends, bl.Seconds, bl.SendsPerSec, bl.RowsPerSec)
		fmt.Fprintf(&b, "todeviced reached %.1f%% of the baseline's sends/s", 100*bl.Ratio)
		if c.Rate > 0 {
			b.WriteString(" (with --rate set, this is the target's share, not a ceiling)")
		}
		b.WriteString("\n")
	}

	v := rep.Verdict
	fmt.Fprintf(&b, "\nverification: expected %d, delivered %d, lost %d, duplicates %d, reordered %d, unexpected %d, corrupt %d, unconfirmed sends %d (their messages delivered: %d), redelivered after unprocessed responses %d (responses dropped on purpose: %d)\n",
		v.Expected, v.Delivered, v.Lost, v.Duplicates, v.Reordered, v.Unexpected, v.Corrupt,
		v.UnconfirmedSends, v.UnconfirmedDelivered, v.Redelivered, rep.DroppedResponses)
	for _, e := range v.Examples {
		fmt.Fprintf(&b, "  %s\n", e)
	}
	if v.OK {
		b.WriteString("PASS: every confirmed message was delivered exactly once, in order\n")
	} else {
		b.WriteString("FAIL\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}
