//go:build wedgetest

package stack

// stallForTest, in binaries built with -tags wedgetest only, blocks the
// packet loop forever once WedgeForTest was called, as a deadlock in the data
// path would. The systemd test uses it to prove that the watchdog notices.
func (l *link) stallForTest() {
	if l.stall.Load() {
		select {}
	}
}

// WedgeForTest wedges the packet loop at its next batch. Test builds only.
func (s *Stack) WedgeForTest() { s.link.stall.Store(true) }
