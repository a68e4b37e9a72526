package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/todeviced/todeviced/internal/httpapi"
	"github.com/todeviced/todeviced/internal/server"
)

// adminUsage lists the admin subcommands.
const adminUsage = `Usage: todeviced admin [--admin-url URL] [--admin-secret S] [--json] COMMAND
  inbox USER_ID DEVICE_ID                      a device's inbox: count, oldest, by type and by sender
  purge USER_ID DEVICE_ID --type T|--sender S|--all
                                               delete a device's pending messages of one type, of one sender, or all
  devices USER_ID                              a user's devices and their inbox sizes
  top [--limit N]                              the largest inboxes on the server (default 20)
  destinations [--limit N]                     federation destinations: backlog, oldest, backoff, lease, last status
  retry DESTINATION                            end a destination's backoff and send now
  drop-queue DESTINATION                       delete everything queued for a destination
  device-list USER_ID                          a remote user's cached device list and resync state
  resync USER_ID                               make a remote user's device list due for a resync now
The secret comes from --admin-secret or TODEVICED_ADMIN_SECRET; the URL from
--admin-url or TODEVICED_ADMIN_URL (default: the local --listen address).`

// adminCLI is what one run of `todeviced admin` was given.
type adminCLI struct {
	url, secret string
	json        bool
	stdout      io.Writer
	client      *http.Client
}

// adminCmd runs `todeviced admin …`: a client of the admin API over HTTP.
func adminCmd(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	cfg := server.Defaults()
	c := adminCLI{stdout: stdout, client: &http.Client{Timeout: time.Minute}}
	fs := flag.NewFlagSet("todeviced admin", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprintln(stderr, adminUsage) }
	fs.StringVar(&c.url, "admin-url", "", "base URL of the admin API's server (default: http:// and the --listen address)")
	fs.StringVar(&c.secret, "admin-secret", "", "the admin secret")
	fs.StringVar(&cfg.Listen, "listen", cfg.Listen, "the server's --listen, for the default --admin-url")
	fs.BoolVar(&c.json, "json", false, "print the API's JSON answer")
	typ := fs.String("type", "", "purge: only messages of this event type")
	sender := fs.String("sender", "", "purge: only messages from this user")
	all := fs.Bool("all", false, "purge: every pending message of the device")
	limit := fs.Int("limit", 20, "top, destinations: how many")
	pos, err := parseAdminArgs(fs, args, getenv)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "todeviced admin: %v\n", err)
		return 2
	}
	if c.url == "" {
		c.url = "http://" + localAddr(cfg.Listen)
	}
	c.url = strings.TrimSuffix(c.url, "/")
	if c.secret == "" {
		fmt.Fprintln(stderr, "todeviced admin: no admin secret: set --admin-secret or TODEVICED_ADMIN_SECRET")
		return 2
	}
	bad := func() int { fmt.Fprintln(stderr, adminUsage); return 2 }
	if len(pos) == 0 {
		return bad()
	}
	esc := url.PathEscape
	switch cmd, pos := pos[0], pos[1:]; {
	case cmd == "inbox" && len(pos) == 2:
		var v httpapi.AdminInbox
		return c.do(ctx, stderr, http.MethodGet, "/users/"+esc(pos[0])+"/devices/"+esc(pos[1])+"/inbox", nil, &v, func(w io.Writer) {
			fmt.Fprintf(w, "%s %s: %d pending, oldest %s\n", v.UserID, v.DeviceID, v.Count, fmtTS(v.OldestTS))
			printCounts(w, "TYPE", v.ByType)
			printCounts(w, "SENDER", v.BySender)
		})
	case cmd == "purge" && len(pos) == 2:
		if (*typ == "" && *sender == "") != *all {
			fmt.Fprintln(stderr, "todeviced admin: purge takes one of --type, --sender or --all")
			return 2
		}
		var v struct {
			Purged int `json:"purged"`
		}
		body := httpapi.AdminPurge{Type: *typ, Sender: *sender}
		return c.do(ctx, stderr, http.MethodPost, "/users/"+esc(pos[0])+"/devices/"+esc(pos[1])+"/inbox/purge", body, &v, func(w io.Writer) {
			fmt.Fprintf(w, "purged %d message(s)\n", v.Purged)
		})
	case cmd == "devices" && len(pos) == 1:
		var v struct {
			Devices []httpapi.AdminInboxSize `json:"devices"`
		}
		return c.do(ctx, stderr, http.MethodGet, "/users/"+esc(pos[0])+"/devices", nil, &v, func(w io.Writer) {
			printSizes(w, v.Devices)
		})
	case cmd == "top" && len(pos) == 0:
		var v struct {
			Inboxes []httpapi.AdminInboxSize `json:"inboxes"`
		}
		return c.do(ctx, stderr, http.MethodGet, "/inboxes/largest?limit="+strconv.Itoa(*limit), nil, &v, func(w io.Writer) {
			printSizes(w, v.Inboxes)
		})
	case cmd == "destinations" && len(pos) == 0:
		var v struct {
			Destinations []httpapi.AdminDestination `json:"destinations"`
		}
		return c.do(ctx, stderr, http.MethodGet, "/federation/destinations?limit="+strconv.Itoa(*limit), nil, &v, func(w io.Writer) {
			fmt.Fprintln(w, "DESTINATION\tQUEUED\tOLDEST\tFAILURES\tRETRY\tLEASE\tTXN\tATTEMPTS\tLAST STATUS")
			for _, d := range v.Destinations {
				retry := "-"
				if d.BackingOff {
					retry = fmtTS(d.RetryTS)
				}
				lease := "-"
				if d.LeaseHolder != "" {
					lease = d.LeaseHolder
				}
				fmt.Fprintf(w, "%s\t%d\t%s\t%d\t%s\t%s\t%s\t%d\t%d\n", d.Destination, d.Queued, fmtTS(d.OldestTS), d.Failures, retry,
					lease, cmp.Or(d.TxnID, "-"), d.TxnAttempts, d.LastStatus)
			}
		})
	case cmd == "retry" && len(pos) == 1:
		var v struct {
			Found bool `json:"found"`
		}
		return c.do(ctx, stderr, http.MethodPost, "/federation/destinations/"+esc(pos[0])+"/retry", nil, &v, func(w io.Writer) {
			if v.Found {
				fmt.Fprintf(w, "%s: backoff ended, sending now\n", pos[0])
			} else {
				fmt.Fprintf(w, "%s: never tried, nothing to reset\n", pos[0])
			}
		})
	case cmd == "device-list" && len(pos) == 1:
		var v httpapi.AdminRemoteDeviceList
		return c.do(ctx, stderr, http.MethodGet, "/users/"+esc(pos[0])+"/device_list", nil, &v, func(w io.Writer) {
			if !v.Tracked {
				fmt.Fprintf(w, "%s: not tracked (no local user shares an encrypted room with them)\n", v.UserID)
				return
			}
			state := "fresh"
			if v.Stale {
				state = "stale, resync due " + fmtTS(v.RetryTS)
			}
			fmt.Fprintf(w, "%s: stream_id %d, %s, %d failure(s), updated %s\n", v.UserID, v.StreamID, state, v.Failures, fmtTS(v.UpdatedTS))
			fmt.Fprintln(w, "\nDEVICE\tNAME\tKEYS")
			for _, d := range v.Devices {
				keys := "no"
				if len(d.Keys) > 0 {
					keys = "yes"
				}
				fmt.Fprintf(w, "%s\t%s\t%s\n", d.DeviceID, cmp.Or(d.DisplayName, "-"), keys)
			}
		})
	case cmd == "resync" && len(pos) == 1:
		var v struct {
			Found bool `json:"found"`
		}
		return c.do(ctx, stderr, http.MethodPost, "/users/"+esc(pos[0])+"/device_list/resync", nil, &v, func(w io.Writer) {
			if v.Found {
				fmt.Fprintf(w, "%s: resync due now\n", pos[0])
			} else {
				fmt.Fprintf(w, "%s: not tracked, nothing to resync\n", pos[0])
			}
		})
	case cmd == "drop-queue" && len(pos) == 1:
		var v struct {
			Dropped int `json:"dropped"`
		}
		return c.do(ctx, stderr, http.MethodPost, "/federation/destinations/"+esc(pos[0])+"/drop", nil, &v, func(w io.Writer) {
			fmt.Fprintf(w, "%s: dropped %d EDU(s)\n", pos[0], v.Dropped)
		})
	}
	return bad()
}

// parseAdminArgs parses flags between the positional arguments; of the
// environment it reads only the connection's settings (a TODEVICED_TYPE
// left in a shell must never narrow or widen a purge).
func parseAdminArgs(fs *flag.FlagSet, args []string, getenv func(string) string) ([]string, error) {
	positional, given, err := parseInterleaved(fs, args)
	if err != nil {
		return nil, err
	}
	for _, name := range []string{"admin-url", "admin-secret", "listen"} {
		if v, ok := lookupEnv(getenv, envName(name)); ok && !given[name] {
			if err := fs.Set(name, v); err != nil {
				return nil, fmt.Errorf("%s=%q: %v", envName(name), v, err)
			}
		}
	}
	return positional, nil
}

// localAddr turns a listen address into one to connect to: an unspecified
// host is the loopback.
func localAddr(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

// do makes one request and prints its answer: the JSON with --json, else
// the table print writes from the decoded v.
func (c adminCLI) do(ctx context.Context, stderr io.Writer, method, path string, body, v any, print func(io.Writer)) int {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			fmt.Fprintf(stderr, "todeviced admin: %v\n", err)
			return 1
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.url+httpapi.AdminPrefix+path, rd)
	if err != nil {
		fmt.Fprintf(stderr, "todeviced admin: %v\n", err)
		return 2
	}
	req.Header.Set("Authorization", "Bearer "+c.secret)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.client.Do(req)
	if err != nil {
		fmt.Fprintf(stderr, "todeviced admin: %v\n", err)
		return 1
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		fmt.Fprintf(stderr, "todeviced admin: reading the answer: %v\n", err)
		return 1
	}
	if resp.StatusCode != http.StatusOK {
		var e struct{ Errcode, Error string }
		_ = json.Unmarshal(data, &e)
		if resp.StatusCode == http.StatusNotFound && e.Errcode == "M_UNRECOGNIZED" {
			e.Error += " (is --admin-secret set on the server?)"
		}
		fmt.Fprintf(stderr, "todeviced admin: %s: %s %s\n", resp.Status, e.Errcode, e.Error)
		return 1
	}
	if c.json {
		var out bytes.Buffer
		if json.Indent(&out, data, "", "  ") != nil {
			out.Reset()
			out.Write(data)
		}
		fmt.Fprintln(c.stdout, out.String())
		return 0
	}
	if err := json.Unmarshal(data, v); err != nil {
		fmt.Fprintf(stderr, "todeviced admin: decoding the answer: %v\n", err)
		return 1
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	print(tw)
	_ = tw.Flush()
	return 0
}

func fmtTS(ms *int64) string {
	if ms == nil {
		return "-"
	}
	t := time.UnixMilli(*ms).UTC()
	return t.Format(time.RFC3339) + " (" + time.Since(t).Round(time.Second).String() + " ago)"
}

func printCounts(w io.Writer, what string, counts []httpapi.AdminKeyCount) {
	if len(counts) == 0 {
		return
	}
	fmt.Fprintf(w, "\n%s\tCOUNT\n", what)
	for _, k := range counts {
		fmt.Fprintf(w, "%s\t%d\n", k.Key, k.Count)
	}
}

func printSizes(w io.Writer, sizes []httpapi.AdminInboxSize) {
	fmt.Fprintln(w, "USER\tDEVICE\tPENDING\tOLDEST")
	for _, s := range sizes {
		dev := s.DeviceID
		if dev == "" {
			dev = "(deleted)"
		}
		fmt.Fprintf(w, "%s\t%s\t%d\t%s\n", s.UserID, dev, s.Count, fmtTS(s.OldestTS))
	}
}
