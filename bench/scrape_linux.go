//go:build linux

package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"tcpd/internal/netlab"
)

// series maps a sample's name with its labels, as written in the text
// exposition format (`tcpd_dropped_total{reason="spoofed"}`), to its value.
type series map[string]float64

// sum adds every series of the metric name, whatever its labels.
func (s series) sum(name string) float64 {
	var t float64
	for k, v := range s {
		if k == name || strings.HasPrefix(k, name+"{") {
			t += v
		}
	}
	return t
}

// has reports whether any series of the metric name is present.
func (s series) has(name string) bool {
	for k := range s {
		if k == name || strings.HasPrefix(k, name+"{") {
			return true
		}
	}
	return false
}

// scrape fetches http://addr/metrics from inside ns (the gateway, where
// tcpd's metrics listener is) in the classic text format.
func scrape(ctx context.Context, ns *netlab.NS, addr string) (series, error) {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
			return ns.Dial(ctx, network, a)
		},
		DisableKeepAlives: true,
	}
	defer tr.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "text/plain;version=0.0.4")
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape %s in %s: %w", addr, ns.Name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape %s in %s: %s", addr, ns.Name, resp.Status)
	}
	return parseText(resp.Body)
}

// parseText reads the samples of the text exposition format. Label values
// with spaces are not expected from tcpd; a line it cannot read is skipped.
func parseText(r io.Reader) (series, error) {
	s := series{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		// The value follows the last '}' or, without labels, the name.
		rest := line
		key := ""
		if i := strings.LastIndexByte(line, '}'); i >= 0 {
			key, rest = line[:i+1], line[i+1:]
		} else if name, r, ok := strings.Cut(line, " "); ok {
			key, rest = name, r
		} else {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		s[key] = v
	}
	return s, sc.Err()
}
