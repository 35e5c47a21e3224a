//go:build linux

package bench

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strconv"
	"time"
)

// The queues phase measures what the TUN's queues (tun.queues) are worth:
// the same tcpd binary twice, each on a lab of its own, one with a single
// queue and one with tun.queues auto (one per CPU), next to the kernel,
// interleaved, on the two loads that spread over queues: bulk transfers of
// cfg.QueueStreams parallel streams each way, and the connection rate with
// the clients spread over every client address of the lab.

// queuePaths are the tcpd paths of the queues phase: path name, tun.queues.
var queuePaths = []struct{ name, queues string }{{"q1", "1"}, {"qauto", "auto"}}

// queueSpread is what each queue of a tcpd carried over one measurement.
type queueSpread struct {
	in, out []float64 // packets per queue
}

// queueCounts reads tcpd_tun_queue_packets_total by queue in direction dir.
func queueCounts(m series, dir string) []float64 {
	var out []float64
	for q := 0; ; q++ {
		v, ok := m[`tcpd_tun_queue_packets_total{direction="`+dir+`",queue="`+strconv.Itoa(q)+`"}`]
		if !ok {
			return out
		}
		out = append(out, v)
	}
}

// spread returns what each queue carried between two scrapes.
func spread(before, after series) queueSpread {
	diff := func(dir string) []float64 {
		a, b := queueCounts(after, dir), queueCounts(before, dir)
		for i := range a {
			if i < len(b) {
				a[i] -= b[i]
			}
		}
		return a
	}
	return queueSpread{in: diff("in"), out: diff("out")}
}

// quietestShare is the share of all packets, in percent, that the queue
// that carried the fewest carried: 100/queues when they share alike, 0
// when one carried nothing. NaN without packets.
func quietestShare(per []float64) float64 {
	var sum float64
	for _, v := range per {
		sum += v
	}
	if len(per) == 0 || sum == 0 {
		return math.NaN()
	}
	return slices.Min(per) / sum * 100
}

// queuesPhase runs the queues phase on the kernel path and on a fresh lab
// per tun.queues setting.
func (b *bencher) queuesPhase(ctx context.Context, kernel *path, paths []*path) error {
	for _, p := range paths {
		if err := b.startTCPD(ctx, p, p.name, mainTimeWait); err != nil {
			return err
		}
		defer b.stopTCPD(p, p.name)
		if err := b.check(ctx, p); err != nil {
			return fmt.Errorf("%w\n--- %s log (last lines) ---\n%s", err, p.name, lastLines(p.tcpd.Logs(), 20))
		}
		b.progress("%s running as pid %d (%s), tun.queues %s: %v queue(s), offload %v",
			p.name, p.pid, p.bin, p.queues, readyField(p, "queues"), offload(p.tcpd))
	}
	all := append([]*path{kernel}, paths...)
	// around runs one measurement on p, recording on a tcpd path how its
	// queues shared the packets.
	around := func(p *path, id, name string, rep int, run func() (string, error)) error {
		return b.measure(ctx, p, name, rep, func() error {
			var before series
			if p.tcpd != nil {
				var err error
				if before, err = p.scrape(ctx); err != nil {
					return err
				}
			}
			msg, err := run()
			if err != nil {
				return err
			}
			if p.tcpd != nil {
				after, err := p.scrape(ctx)
				if err != nil {
					return err
				}
				s := spread(before, after)
				b.record(id+"_qin", p.name, quietestShare(s.in))
				b.record(id+"_qout", p.name, quietestShare(s.out))
				msg += fmt.Sprintf("; packets per queue in %v, out %v", s.in, s.out)
			}
			b.progress("%-6s %-26s run %d: %s", p.name, name, rep+1, msg)
			return nil
		})
	}
	n := b.cfg.QueueStreams
	for rep := range b.cfg.Runs {
		k := rep % len(all)
		order := append(slices.Clone(all[k:]), all[:k]...)
		for _, upload := range []bool{true, false} {
			dir, id := "download", "qdown"
			if upload {
				dir, id = "upload", "qup"
			}
			name := fmt.Sprintf("bulk %s, %d streams", dir, n)
			for _, p := range order {
				err := around(p, id, name, rep, func() (string, error) {
					r, err := b.bulk(ctx, p, upload, n, fmt.Sprintf("%s-%s-%d-%d", p.name, dir, n, rep+1))
					if err != nil {
						b.record(id, p.name, math.NaN())
						return "", err
					}
					b.record(id, p.name, r.gbps())
					return fmt.Sprintf("%.2f Gbit/s (%d MB in %.1fs)", r.gbps(), r.bytes/1e6, r.dur.Seconds()), nil
				})
				if err != nil {
					return err
				}
			}
		}
		name := fmt.Sprintf("conn rate, %d clients", len(kernel.srcs))
		for _, p := range order {
			err := around(p, "qcrr", name, rep, func() (string, error) {
				r, err := b.connRate(ctx, p, false, nil, p.srcs)
				if err != nil {
					b.record("qcrr", p.name, math.NaN())
					return "", err
				}
				b.record("qcrr", p.name, r.rate())
				b.record("qcrr_err", p.name, float64(r.errs))
				b.record("qcrr_stuck", p.name, float64(r.stuck))
				if r.firstErr != "" {
					b.notef("%s %s run %d: %d errors, %d stuck; first: %s", p.name, name, rep+1, r.errs, r.stuck, r.firstErr)
				}
				msg := fmt.Sprintf("%.0f conn/s, %d errors, %d stuck", r.rate(), r.errs, r.stuck)
				if p.tcpd != nil {
					c := r.cost.perConn(r.ok)
					b.record("qcrr_cpu", p.name, c.user+c.sys)
					msg += fmt.Sprintf("; tcpd CPU %.0f µs user + %.0f µs system per conn", c.user, c.sys)
				}
				return msg, nil
			})
			if err != nil {
				return err
			}
		}
	}
	for _, p := range paths {
		if m, err := p.scrape(ctx); err == nil {
			if c := m.sum("tcpd_conntrack_corrections_total"); c > 0 {
				b.notef("queues: the %s instance counted %v conntrack corrections", p.name, c)
			}
		}
	}
	return nil
}

// readyField is a field of tcpd's "ready" log line.
func readyField(p *path, field string) any {
	for _, m := range p.tcpd.LogLines() {
		if m["msg"] == "ready" {
			return m[field]
		}
	}
	return "?"
}

// queueRows are the table's rows of the queues phase: per load, the kernel
// next to each tun.queues setting, the ratio of auto to one queue, and how
// evenly auto's queues shared the packets.
func (b *bencher) queueRows() []Row {
	get := func(id, path string) []float64 { return b.vals[id][path] }
	n := b.cfg.QueueStreams
	var rows []Row
	for _, l := range []struct{ id, metric, unit string }{
		{"qup", fmt.Sprintf("bulk upload, %d streams", n), "Gbit/s"},
		{"qdown", fmt.Sprintf("bulk download, %d streams", n), "Gbit/s"},
		{"qcrr", fmt.Sprintf("new conns, %d client addresses, %d workers", b.queueClients, b.cfg.Workers), "conn/s"},
	} {
		for _, q := range queuePaths {
			rows = append(rows, newRow(l.metric+", tun.queues "+q.queues, l.unit, "higher", "median",
				get(l.id, "kernel"), get(l.id, q.name), nil))
		}
		one, auto := aggregate("median", get(l.id, "q1")), aggregate("median", get(l.id, "qauto"))
		var r []float64
		if q := quotient(auto, one); q != nil {
			r = []float64{*q}
		}
		// The two settings run back to back in each repetition, so each
		// repetition's ratio compares them under the same load on the
		// machine; the ratio of the medians can pair a quiet run of one
		// with a loaded run of the other.
		var pairs []float64
		q1, qa := get(l.id, "q1"), get(l.id, "qauto")
		for i := range min(len(q1), len(qa)) {
			if q1[i] > 0 && !math.IsNaN(q1[i]) && !math.IsNaN(qa[i]) {
				pairs = append(pairs, qa[i]/q1[i])
			}
		}
		rows = append(rows,
			newRow("  tun.queues auto / tun.queues 1 (medians)", "x", "", "final", nil, r, nil),
			newRow("  tun.queues auto / tun.queues 1, run by run (median)", "x", "", "median", nil, pairs, nil),
			newRow("  tun.queues auto: quietest queue's share of packets in", "%", "", "median", nil, get(l.id+"_qin", "qauto"), nil),
			newRow("  tun.queues auto: quietest queue's share of packets out", "%", "", "median", nil, get(l.id+"_qout", "qauto"), nil))
		if l.id == "qcrr" {
			// What each new connection costs tcpd with one read loop
			// and with several: on a machine whose cores the clients and
			// servers share, that, not the loop, bounds the rate.
			for _, q := range queuePaths {
				rows = append(rows, newRow("  tcpd CPU per conn, tun.queues "+q.queues, "µs", "lower", "median", nil, get("qcrr_cpu", q.name), nil))
			}
			for _, q := range queuePaths {
				rows = append(rows,
					newRow("  errors, tun.queues "+q.queues, "", "", "total", get("qcrr_err", "kernel"), get("qcrr_err", q.name), nil),
					newRow(fmt.Sprintf("  stuck > %v, tun.queues %s", b.cfg.Stuck, q.queues), "", "", "total",
						get("qcrr_stuck", "kernel"), get("qcrr_stuck", q.name), nil))
			}
		}
	}
	return rows
}

// queuesNote says what the queues phase ran.
func (b *bencher) queuesNote(start time.Time) {
	b.notef("queues: tcpd with tun.queues 1 and with tun.queues auto, one lab each, interleaved with the kernel; "+
		"the connection rate's workers spread over %d client addresses; %v",
		b.queueClients, time.Since(start).Round(time.Second))
}
