package conntrack

import (
	"reflect"
	"testing"
)

// TestCountersAddEveryField checks that a shard's counters reach every
// field of Counters, each from its own counter, so that a counter added
// later is not silently lost from Snapshot.
func TestCountersAddEveryField(t *testing.T) {
	var set counterSet
	for i := range set {
		set[i].Store(uint64(i + 1))
	}
	var c Counters
	set.addTo(&c)
	v := reflect.ValueOf(c)
	if v.NumField() != int(numCounters) {
		t.Fatalf("Counters has %d fields, the shards count %d", v.NumField(), numCounters)
	}
	seen := map[uint64]string{}
	for i := range v.NumField() {
		n, name := v.Field(i).Uint(), v.Type().Field(i).Name
		if n == 0 || seen[n] != "" {
			t.Errorf("Counters.%s = %d: not summed from a counter of its own (%q has it too)", name, n, seen[n])
		}
		seen[n] = name
	}
}

// TestIDsFindTheirShard checks that every ID leads back to the shard that
// issued it, and that IDs no table issues lead nowhere.
func TestIDsFindTheirShard(t *testing.T) {
	tab := New(Config{})
	for _, id := range []ID{0, 1, numShards - 1} {
		if tab.shardOfID(id) != nil {
			t.Errorf("ID %d: found a shard, want none", id)
		}
	}
	for i := range tab.shards {
		sh := &tab.shards[i]
		sh.mu.Lock()
		id := ID(tab.ids.Add(1)<<shardBits | uint64(sh.idx))
		sh.mu.Unlock()
		if tab.shardOfID(id) != sh {
			t.Fatalf("ID %d issued by shard %d found shard %d", id, i, tab.shardOfID(id).idx)
		}
	}
}

// TestIndexLookupsDuringChanges looks up entries without a lock while
// another goroutine opens and closes thousands of others on the same shard,
// growing and shrinking its indexes: an entry present throughout is always
// found (a miss is confirmed under the lock) and a lookup never returns an
// entry of another key. Run with -race.
func TestIndexLookupsDuringChanges(t *testing.T) {
	tab := New(Config{})
	sh := &tab.shards[0]
	mk := func(i int) (key, uint64) {
		k := key{cport: uint16(i), dport: uint16(i >> 16), v4: true}
		// The shard is fixed; the hash spreads the buckets.
		return k, uint64(i) * 0x9E3779B97F4A7C15 &^ (numShards - 1)
	}
	add := func(i int) *entry {
		k, h := mk(i)
		e := &entry{key: k, khash: h, id: ID(uint64(i+1)<<shardBits | 0)}
		sh.mu.Lock()
		sh.byKey.insertLocked(e)
		sh.byID.insertLocked(e)
		sh.mu.Unlock()
		return e
	}
	const stable = 500
	for i := range stable {
		add(i)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for round := range 20 {
			var es []*entry
			for i := range 2000 {
				es = append(es, add(stable+round*2000+i))
			}
			sh.mu.Lock()
			for _, e := range es {
				e.unkeyed, e.gone = true, true
				sh.byKey.removeLocked(e)
				sh.byID.removeLocked(e)
			}
			sh.byKey.shrinkLocked()
			sh.byID.shrinkLocked()
			sh.mu.Unlock()
		}
	}()
	for n := 0; ; n++ {
		select {
		case <-done:
			if sh.byKey.n != stable || sh.byID.n != stable {
				t.Fatalf("indexes hold %d and %d entries, want %d", sh.byKey.n, sh.byID.n, stable)
			}
			return
		default:
		}
		i := n % stable
		k, h := mk(i)
		e := sh.lookupKey(k, h)
		if e == nil || e.key != k {
			t.Fatalf("lookup of stable entry %d: %v", i, e)
		}
		e.mu.Unlock()
		if e := sh.lookupID(ID(uint64(i+1) << shardBits)); e == nil || e.key != k {
			t.Fatalf("lookup of stable ID %d: %v", i, e)
		} else {
			e.mu.Unlock()
		}
		if e := sh.findKey(k, h); e != nil && e.key != k {
			t.Fatalf("lock-free lookup of %d returned the entry of %v", i, e.key)
		}
	}
}

// TestIndexEmptiesDuringLookups: a shard's indexes drop their buckets
// when the shard empties and allocate them again at its next entry
// (6dd749f); lock-free lookups running through those changes never fail
// or return an entry of another key, and an emptied shard holds no
// buckets. Run with -race.
func TestIndexEmptiesDuringLookups(t *testing.T) {
	tab := New(Config{})
	sh := &tab.shards[0]
	mk := func(i int) (key, uint64) {
		k := key{cport: uint16(i), dport: uint16(i >> 16), v4: true}
		return k, uint64(i) * 0x9E3779B97F4A7C15 &^ (numShards - 1)
	}
	const n, rounds = 64, 300
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range rounds {
			var es []*entry
			sh.mu.Lock()
			for i := range n {
				k, h := mk(i)
				e := &entry{key: k, khash: h, id: ID(uint64(i+1) << shardBits)}
				sh.byKey.insertLocked(e)
				sh.byID.insertLocked(e)
				es = append(es, e)
			}
			sh.mu.Unlock()
			sh.mu.Lock()
			for _, e := range es {
				e.mu.Lock() // as the table does: a lookup locks what it found
				e.unkeyed, e.gone = true, true
				e.mu.Unlock()
				sh.byKey.removeLocked(e)
				sh.byID.removeLocked(e)
			}
			sh.byKey.shrinkLocked()
			sh.byID.shrinkLocked()
			if sh.byKey.buckets.Load() != nil || sh.byID.buckets.Load() != nil {
				sh.mu.Unlock()
				panic("an empty shard keeps its buckets")
			}
			sh.mu.Unlock()
		}
	}()
	for j := 0; ; j++ {
		select {
		case <-done:
			return
		default:
		}
		k, h := mk(j % n)
		if e := sh.findKey(k, h); e != nil && e.key != k {
			t.Fatalf("lock-free lookup of %v returned the entry of %v", k, e.key)
		}
		if e := sh.lookupKey(k, h); e != nil {
			if e.key != k {
				t.Fatalf("lookup of %v returned the entry of %v", k, e.key)
			}
			e.mu.Unlock()
		}
	}
}
