package deploy_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	dto "github.com/prometheus/client_model/go"

	"tcpd/internal/netlab"
)

// TestMain removes whatever a failed test left of its labs.
func TestMain(m *testing.M) {
	code := m.Run()
	if err := netlab.CloseAll(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

// metricsAddr is where tcpd listens for scrapes in the gateway namespace, as
// in configs/tcpd.yaml.
const metricsAddr = "127.0.0.1:9810"

// nsClient is an HTTP client whose connections start inside ns.
func nsClient(ns *netlab.NS) *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return ns.Dial(ctx, network, addr)
		},
	}}
}

// scrapeFamilies fetches tcpd's /metrics in the text format from inside ns.
func scrapeFamilies(ns *netlab.NS) (map[string]*dto.MetricFamily, error) {
	resp, err := nsClient(ns).Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return nil, fmt.Errorf("GET /metrics: %s: %s", resp.Status, b)
	}
	return parseFamilies(resp.Body)
}

// parseFamilies parses a scrape in the text format.
func parseFamilies(r io.Reader) (map[string]*dto.MetricFamily, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	return p.TextToMetricFamilies(r)
}

// samples flattens families into "name{l1="v1",l2="v2"}" → value, labels
// sorted by name, for counters, gauges and untyped metrics.
func samples(fams map[string]*dto.MetricFamily) map[string]float64 {
	out := map[string]float64{}
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			var v float64
			switch {
			case m.Counter != nil:
				v = m.GetCounter().GetValue()
			case m.Gauge != nil:
				v = m.GetGauge().GetValue()
			case m.Untyped != nil:
				v = m.GetUntyped().GetValue()
			default:
				continue
			}
			out[seriesKey(name, m)] = v
		}
	}
	return out
}

func seriesKey(name string, m *dto.Metric) string {
	if len(m.GetLabel()) == 0 {
		return name
	}
	parts := make([]string, 0, len(m.GetLabel()))
	for _, l := range m.GetLabel() { // client_golang exposes them sorted by name
		parts = append(parts, l.GetName()+"="+strconv.Quote(l.GetValue()))
	}
	return name + "{" + strings.Join(parts, ",") + "}"
}
