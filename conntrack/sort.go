package conntrack

import "slices"

func sortConns(cs []Conn) {
	slices.SortFunc(cs, func(a, b Conn) int {
		switch {
		case a.ID < b.ID:
			return -1
		case a.ID > b.ID:
			return 1
		}
		return 0
	})
}
