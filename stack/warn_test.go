package stack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"
)

func TestClassifyDial(t *testing.T) {
	op := func(err error) error {
		return &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", err)}
	}
	for _, tc := range []struct {
		err  error
		want DialFailure
	}{
		{op(syscall.ECONNREFUSED), DialRefused},
		{op(syscall.ETIMEDOUT), DialTimeout},
		{context.DeadlineExceeded, DialTimeout},
		{op(syscall.EHOSTUNREACH), DialUnreachable},
		// As the raw upstream socket reports them.
		{fmt.Errorf("connect: %w", syscall.ECONNREFUSED), DialRefused},
		{fmt.Errorf("connect: %w", os.ErrDeadlineExceeded), DialTimeout},
		{fmt.Errorf("socket: %w", syscall.EMFILE), DialNoDescriptor},
		{fmt.Errorf("bind 198.51.100.1: %w", syscall.EADDRINUSE), DialNoLocalPort},
		{fmt.Errorf("connect 203.0.113.9:443: %w", syscall.EADDRNOTAVAIL), DialNoLocalPort},
		{fmt.Errorf("connect: %w", syscall.ENETUNREACH), DialUnreachable},
		{&net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("socket", syscall.EMFILE)}, DialNoDescriptor},
		{&net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("socket", syscall.ENFILE)}, DialNoDescriptor},
		{op(syscall.EADDRNOTAVAIL), DialNoLocalPort},
		{&net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("bind", syscall.EADDRINUSE)}, DialNoLocalPort},
		// The source address left the host (DHCP, a failover): not a
		// want of ports.
		{&SourceAddressError{Addr: netip.MustParseAddr("198.51.100.1"), NotLocal: true, Err: fmt.Errorf("bind: %w", syscall.EADDRNOTAVAIL)}, DialSourceAddress},
		{errors.New("something else"), DialOther},
	} {
		if got := classifyDial(tc.err); got != tc.want {
			t.Errorf("classifyDial(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

func TestRateLimit(t *testing.T) {
	var r rateLimit
	t0 := time.Date(2026, 12, 6, 0, 0, 0, 0, time.UTC)
	if ok, n := r.allow(t0); !ok || n != 0 {
		t.Fatalf("first event: %v, %d", ok, n)
	}
	for i := 1; i <= 5; i++ {
		if ok, _ := r.allow(t0.Add(time.Duration(i) * time.Second)); ok {
			t.Fatalf("event %ds later let through", i)
		}
	}
	if ok, n := r.allow(t0.Add(warnEvery)); !ok || n != 5 {
		t.Fatalf("event after warnEvery: %v, %d held back; want true and 5", ok, n)
	}
	if ok, _ := r.allow(t0.Add(warnEvery + time.Second)); ok {
		t.Fatal("the next window's second event let through")
	}
}
