package conntrack

import (
	"iter"
	"math/bits"
	"sync/atomic"
)

// shardMarks has a bit for each shard (or client shard), 64 to a word:
// the shards a periodic pass of the table is to visit. The passes run
// every 100 ms (TIME_WAIT expiry) and every second (Tick); looking at every
// one of the 16,384 shards in each of them touched a cache line or two of
// every shard ten times a second even on an idle table, and most of an
// idle tcpd's CPU went there.
//
// A shard marks itself after the change that gives a pass work, under its
// own lock. It writes the word only while its bit is clear, so a busy
// shard writes the word 63 other shards share about once per pass, never
// per connection. A pass clears a word before visiting the shards of its
// bits; a shard with work left after the visit is marked again by the
// pass. No work is missed: a shard that found its bit set and did not
// write it had made its change before the pass cleared the bit, and the
// pass takes the shard's lock after that.
//
// Client shards use the same marks: there are as many (clients.go).
type shardMarks [numShards / 64]atomic.Uint64

// mark flags shard i for the next pass.
func (m *shardMarks) mark(i int) {
	w, bit := &m[i>>6], uint64(1)<<(i&63)
	if w.Load()&bit == 0 {
		w.Or(bit)
	}
}

// take yields the shards marked, clearing each word's marks before it
// yields the shards of that word.
func (m *shardMarks) take() iter.Seq[int] {
	return func(yield func(int) bool) {
		for w := range m {
			if m[w].Load() == 0 {
				continue
			}
			for b := m[w].Swap(0); b != 0; b &= b - 1 {
				if !yield(w<<6 | bits.TrailingZeros64(b)) {
					m[w].Or(b & (b - 1)) // the rest wait for the next pass
					return
				}
			}
		}
	}
}
