package stack

// Go's maps never give back the memory of the most they held, nor do
// slices their capacity, so after a burst of connections the stack's
// per-connection maps would keep their peak size for good. The maintenance
// loop rebuilds a map once it holds a quarter of its peak
// (conntrack's table does the same for its own).

// compactAbove is the size below which a map's peak is left alone: a few
// hundred KiB at most.
const compactAbove = 1024

// compactMaps rebuilds the maps that have shrunk to a quarter of their peak,
// and drops the maintenance loop's scratch slices if they are four times
// larger than the last tick needed. (Each shard does the same with its
// map of relays as relays leave it.)
func (s *Stack) compactMaps() {
	s.adm.compact()
	s.reg.compact()
	if shrunk(len(s.maint.ids), cap(s.maint.ids)) {
		s.maint.ids, s.maint.eps = nil, nil
	}
}

// shrunk reports whether a container that held peak entries and holds n now
// is worth rebuilding.
func shrunk(n, peak int) bool { return peak >= compactAbove && n*4 <= peak }

// compacted returns a copy of m sized for what it holds.
func compacted[K comparable, V any](m map[K]V) map[K]V {
	c := make(map[K]V, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}
