package stack

import (
	"net"
	"testing"
)

// BenchmarkRelayBulk moves bytes from a loopback upstream through tcpd's
// netstack to an in-memory client stack, with conntrack on and bypassed,
// to price connection tracking on the data path. MB/s is per direction.
func BenchmarkRelayBulk(b *testing.B) {
	for _, tc := range []struct {
		name    string
		noTrack bool
	}{{"tracking=on", false}, {"tracking=off", true}} {
		b.Run(tc.name, func(b *testing.B) {
			h := newHarness(b, Config{noTrack: tc.noTrack}, clientAddr)
			const chunk = 1 << 20
			h.listen(b, func(c net.Conn) {
				buf := make([]byte, chunk)
				for {
					if _, err := c.Write(buf); err != nil {
						return
					}
				}
			})
			c, err := h.dial(b, 80)
			if err != nil {
				b.Fatal(err)
			}
			buf := make([]byte, 64<<10)
			b.SetBytes(chunk)
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				for got := 0; got < chunk; {
					n, err := c.Read(buf)
					if err != nil {
						b.Fatal(err)
					}
					got += n
				}
			}
			b.StopTimer()
			c.Close()
		})
	}
}
