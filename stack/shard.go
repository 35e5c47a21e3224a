package stack

import (
	"sync"
	"sync/atomic"
	"time"
)

// A shard is one of the event loops that run the relays and the upstream
// connects: one per P (GOMAXPROCS when the stack starts), each one
// goroutine with its own epoll set (poller, shard_linux.go) and its own
// timer wheel (wheel.go) for the dial, handshake, idle and half-close
// timeouts. A relay belongs to one shard for its life, and only that
// shard's goroutine touches its state; other goroutines queue it with a
// request (relay.post), which is all the netstack's waiter callbacks do.
type shard struct {
	s     *Stack
	poll  poller
	wheel *wheel

	// sleeping is set while the loop may be parked in the poller with an
	// empty queue: queue wakes it only then.
	sleeping atomic.Bool
	// stats are the shard's own counters (Stats.Relays[i]).
	stats *RelayStats
	// squeeze asks the loop to abort the handshakes that have waited
	// squeezeAge for the client's ACK (admission.squeeze).
	squeeze atomic.Bool

	mu sync.Mutex
	// queued are the relays with a request the loop has not seen.
	queued  []*relay
	closing bool

	// relays maps an upstream socket's epoll token to its relay. peak is
	// the most it has held since it was last built.
	relays map[uint64]*relay
	token  uint64
	peak   int

	done chan struct{}
}

// newShards starts n shards.
func newShards(s *Stack, n int) ([]*shard, error) {
	shards := make([]*shard, 0, n)
	s.stats.Relays = make([]RelayStats, n)
	for i := range n {
		sh := &shard{s: s, wheel: newWheel(time.Now()), relays: map[uint64]*relay{}, done: make(chan struct{}),
			stats: &s.stats.Relays[i]}
		if err := sh.poll.open(); err != nil {
			for _, o := range shards {
				o.close()
			}
			return nil, err
		}
		shards = append(shards, sh)
		go sh.loop()
	}
	return shards, nil
}

// queue puts r in the shard's queue, unless it is there already, and wakes
// the loop if it sleeps. Any goroutine may call it; it takes the shard's
// lock, so that what the caller wrote before is seen by the loop.
func (sh *shard) queue(r *relay) {
	sh.mu.Lock()
	if !r.queued {
		r.queued = true
		sh.queued = append(sh.queued, r)
	}
	sh.mu.Unlock()
	if sh.sleeping.CompareAndSwap(true, false) {
		sh.poll.wake()
	}
}

// loop runs the shard: queued relays, socket events, timers, until close.
func (sh *shard) loop() {
	defer close(sh.done)
	var batch []*relay
	events := make([]pollEvent, 128)
	for {
		sh.mu.Lock()
		batch, sh.queued = sh.queued, batch[:0]
		for _, r := range batch {
			r.queued = false
		}
		closing := sh.closing
		sh.mu.Unlock()
		for _, r := range batch {
			sh.step(r)
		}
		clear(batch)
		if closing {
			return
		}
		now := time.Now()
		if sh.squeeze.Swap(false) {
			sh.squeezeHandshakes(now)
		}
		sh.wheel.advance(now)

		// The deadline first, then sleeping, then a last look at the
		// queue: a relay queued after that look wakes the wait, and the
		// wake (which moves the deadline) comes after the deadline set
		// here, so it is never lost.
		timeout := time.Duration(-1)
		if d, ok := sh.wheel.next(now); ok {
			timeout = d
		}
		if timeout != 0 {
			sh.poll.arm(timeout)
		}
		sh.sleeping.Store(true)
		sh.mu.Lock()
		busy := len(sh.queued) > 0 || sh.closing || sh.squeeze.Load()
		sh.mu.Unlock()
		n := sh.poll.wait(events, !busy && timeout != 0)
		sh.sleeping.Store(false)
		for _, ev := range events[:n] {
			sh.mu.Lock()
			r := sh.relays[ev.token]
			sh.mu.Unlock()
			if r == nil {
				continue // its socket was closed after the event was queued
			}
			ev.apply(r)
			sh.step(r)
		}
	}
}

// squeezeSoon has the loop squeeze its handshakes at its next turn. Any
// goroutine may call it.
func (sh *shard) squeezeSoon() {
	sh.squeeze.Store(true)
	if sh.sleeping.CompareAndSwap(true, false) {
		sh.poll.wake()
	}
}

// squeezeHandshakes aborts the half-open connections of the shard that have
// waited squeezeAge or more for the client's ACK: those whose handshake
// timer, armed for tcp.handshake_timeout when the SYN-ACK went out, has
// less than that minus squeezeAge to run.
func (sh *shard) squeezeHandshakes(now time.Time) {
	due := sh.wheel.since(now.Add(sh.s.tune.Load().HandshakeTimeout - squeezeAge))
	var old []*relay
	sh.mu.Lock()
	for _, r := range sh.relays {
		if r.phase == phaseConnected && r.timer.armed && r.timer.when <= due {
			old = append(old, r)
		}
	}
	sh.mu.Unlock()
	for _, r := range old {
		func() {
			defer r.recoverPanic()
			r.handshakeTimedOut()
		}()
	}
}

// step runs one relay's step, isolating a panic to that relay.
func (sh *shard) step(r *relay) {
	defer r.recoverPanic()
	r.step()
}

// add puts r's upstream socket in the shard's epoll set. Any goroutine may
// call it (the handler does, right after connect).
func (sh *shard) add(r *relay) error {
	sh.mu.Lock()
	sh.token++
	r.token = sh.token
	sh.relays[r.token] = r
	sh.peak = max(sh.peak, len(sh.relays))
	sh.mu.Unlock()
	if err := sh.poll.add(r.fd, r.token); err != nil {
		sh.remove(r)
		return err
	}
	return nil
}

// remove forgets r's socket, which the caller then closes (closing takes
// it out of the epoll set).
func (sh *shard) remove(r *relay) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	delete(sh.relays, r.token)
	if shrunk(len(sh.relays), sh.peak) {
		sh.relays, sh.peak = compacted(sh.relays), len(sh.relays)
	}
}

// postAll posts req to every relay whose upstream socket the shard holds.
func (sh *shard) postAll(req uint32) {
	sh.mu.Lock()
	relays := make([]*relay, 0, len(sh.relays))
	for _, r := range sh.relays {
		relays = append(relays, r)
	}
	sh.mu.Unlock()
	for _, r := range relays {
		r.post(req)
	}
}

// close stops the loop, once every relay has ended, and waits for it.
func (sh *shard) close() {
	sh.mu.Lock()
	sh.closing = true
	sh.mu.Unlock()
	sh.poll.wake()
	<-sh.done
	sh.poll.close()
}
