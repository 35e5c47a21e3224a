package conntrack

import "sync/atomic"

// index is a hash table of a shard's entries, chained through one of their
// link fields, that lookups walk without a lock while the shard's lock
// serialises the changes. It replaces a Go map, whose readers must exclude
// its writers: with it, a segment's lookup never waits for a connection
// being opened or closed on the same shard, nor for the map growing.
//
// Lookups load the bucket array and follow atomic links; an entry is
// complete before it is published at the head of its chain, and a removed
// entry keeps its link, so a lookup that stands on it walks on. A lookup
// can miss an entry only while a resize rewires the chains: so a miss is
// confirmed under the shard's lock (findLocked) before it counts.
type index struct {
	buckets atomic.Pointer[[]atomic.Pointer[entry]]
	// n counts the entries; changed under the shard's lock.
	n int
	// link says which of the entries' links chains this index, and hash
	// gives an entry's hash in it.
	link int
	hash func(*entry) uint64
}

// Which link of an entry chains which index.
const (
	linkKey = iota
	linkID
	numLinks
)

// minBuckets is an index's smallest bucket array.
const minBuckets = 8

// init makes x an empty index chained through link, hashing with hash. Its
// bucket array is allocated at its first entry: most of a table's shards
// are empty most of the time.
func (x *index) init(link int, hash func(*entry) uint64) {
	x.link, x.hash = link, hash
}

// head returns the first entry of the chain of hash h, without a lock.
func (x *index) head(h uint64) *entry {
	p := x.buckets.Load()
	if p == nil {
		return nil
	}
	b := *p
	return b[h&uint64(len(b)-1)].Load()
}

// next returns the entry after e in its chain.
func (x *index) next(e *entry) *entry { return e.links[x.link].Load() }

// insertLocked adds e, growing the buckets so that chains stay about one
// entry long. The shard's lock is held.
func (x *index) insertLocked(e *entry) {
	if x.buckets.Load() == nil {
		x.resizeLocked(minBuckets)
	}
	b := *x.buckets.Load()
	if x.n >= len(b) {
		x.resizeLocked(2 * len(b))
		b = *x.buckets.Load()
	}
	slot := &b[x.hash(e)&uint64(len(b)-1)]
	e.links[x.link].Store(slot.Load())
	slot.Store(e)
	x.n++
}

// removeLocked takes e out of its chain. e keeps its link, for lookups
// standing on it. The shard's lock is held.
func (x *index) removeLocked(e *entry) bool {
	b := *x.buckets.Load()
	p := &b[x.hash(e)&uint64(len(b)-1)]
	for cur := p.Load(); cur != nil; cur = cur.links[x.link].Load() {
		if cur == e {
			p.Store(e.links[x.link].Load())
			x.n--
			return true
		}
		p = &cur.links[x.link]
	}
	return false
}

// shrinkLocked halves the buckets while they are four times as many as
// the entries, and drops them when there are none: after a burst, the
// arrays give their memory back.
func (x *index) shrinkLocked() {
	if x.buckets.Load() == nil {
		return
	}
	if x.n == 0 {
		x.buckets.Store(nil)
		return
	}
	size := len(*x.buckets.Load())
	for size > minBuckets && x.n*4 <= size {
		size /= 2
	}
	if size != len(*x.buckets.Load()) {
		x.resizeLocked(size)
	}
}

// resizeLocked rechains every entry into a new bucket array of size
// buckets (a power of two) and publishes it. The shard's lock is held.
func (x *index) resizeLocked(size int) {
	var old []atomic.Pointer[entry]
	if p := x.buckets.Load(); p != nil {
		old = *p
	}
	nb := make([]atomic.Pointer[entry], size)
	for i := range old {
		for e := old[i].Load(); e != nil; {
			next := e.links[x.link].Load()
			slot := &nb[x.hash(e)&uint64(size-1)]
			e.links[x.link].Store(slot.Load())
			slot.Store(e)
			e = next
		}
	}
	x.buckets.Store(&nb)
}

// appendAll appends every entry to es. The shard's lock is held.
func (x *index) appendAll(es []*entry) []*entry {
	p := x.buckets.Load()
	if p == nil {
		return es
	}
	b := *p
	for i := range b {
		for e := b[i].Load(); e != nil; e = e.links[x.link].Load() {
			es = append(es, e)
		}
	}
	return es
}
