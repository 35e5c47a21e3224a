package stack

import (
	"fmt"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// poller is a shard's epoll set. Upstream sockets are registered
// edge-triggered for reading, writing, the peer's FIN and errors, once, for
// their whole life; closing a socket takes it out.
//
// The shard never blocks in epoll_wait itself: a goroutine blocked in a
// system call keeps its P until the runtime's monitor takes it back, tens
// of microseconds to milliseconds later, and with a shard per P that
// would stall every other goroutine. The epoll set is itself in the Go
// runtime's netpoller (an epoll fd is readable while it has events), so a
// shard with nothing to do parks like any goroutine waiting on a socket,
// holding neither a P nor a thread, and the runtime wakes it: when the set
// has events, when its read deadline (the wheel's next timer) passes, and
// when another goroutine moves that deadline to the past (wake), which
// costs no system call.
type poller struct {
	epfd     int
	file     *os.File // epfd, as the runtime polls it
	rc       syscall.RawConn
	raw      []unix.EpollEvent
	deadline time.Time // the read deadline last set by wait; see wait
}

// pollEvent is one readiness report: the socket's token and what it says.
type pollEvent struct {
	token  uint64
	events uint32
}

// past is a read deadline that has passed: setting it wakes the shard.
var past = time.Unix(1, 0)

func (p *poller) open() error {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return fmt.Errorf("epoll_create1: %w", err)
	}
	// Non-blocking, so that os.NewFile hands it to the netpoller.
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		return fmt.Errorf("epoll fd: %w", err)
	}
	p.epfd = epfd
	p.file = os.NewFile(uintptr(epfd), "shard-epoll")
	rc, err := p.file.SyscallConn()
	if err != nil {
		p.file.Close()
		return fmt.Errorf("epoll fd: %w", err)
	}
	p.rc = rc
	return nil
}

func (p *poller) add(fd int, token uint64) error {
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET}
	setToken(&ev, token)
	if err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		return fmt.Errorf("epoll_ctl: %w", err)
	}
	return nil
}

// arm sets how long the next blocking wait may park: until timeout
// (negative: no limit). The deadline is set only when it changes. A wake
// moves it to the past behind arm's back, so when a wait ends on a
// deadline (its own or a wake's) the next arm sets it afresh.
func (p *poller) arm(timeout time.Duration) {
	var d time.Time
	if timeout >= 0 {
		d = time.Now().Add(timeout)
	}
	if !d.Equal(p.deadline) {
		p.file.SetReadDeadline(d)
		p.deadline = d
	}
}

// wait puts the events that are ready in events and returns how many. If
// block, and none are, it parks the goroutine until some are, the
// deadline armed last passes or wake is called.
func (p *poller) wait(events []pollEvent, block bool) int {
	if cap(p.raw) < len(events) {
		p.raw = make([]unix.EpollEvent, len(events))
	}
	n := 0
	collect := func(fd uintptr) bool {
		for {
			m, err := unix.EpollWait(int(fd), p.raw[:len(events)], 0)
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				return true
			}
			n = m
			// Nothing ready: park until the set becomes readable. Events
			// that come after a call that returned fewer than it could
			// take make it readable again, so a set drained that far is
			// never left with events while parked.
			return m > 0
		}
	}
	if !block {
		collect(uintptr(p.epfd))
	} else if p.rc.Read(collect) != nil {
		// A deadline or a closed file ended the wait, with no events.
		p.deadline = past
	}
	for i, ev := range p.raw[:n] {
		events[i] = pollEvent{token: getToken(&ev), events: ev.Events}
	}
	return n
}

// wake makes a wait return, or the next one if none is in progress. Any
// goroutine may call it.
func (p *poller) wake() { p.file.SetReadDeadline(past) }

func (p *poller) close() { p.file.Close() }

// setToken and getToken keep a 64-bit token in the event's data, which
// x/sys/unix splits into Fd and Pad.
func setToken(ev *unix.EpollEvent, t uint64) {
	ev.Fd, ev.Pad = int32(uint32(t)), int32(uint32(t>>32))
}

func getToken(ev *unix.EpollEvent) uint64 {
	return uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
}

// apply records what the event says about the relay's upstream socket.
func (ev pollEvent) apply(r *relay) {
	if ev.events&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		r.upReadable = true
	}
	if ev.events&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		r.upHangup = true
	}
	if ev.events&(unix.EPOLLOUT|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		r.upWritable = true
	}
	if ev.events&unix.EPOLLERR != 0 {
		r.upError = true
	}
}
