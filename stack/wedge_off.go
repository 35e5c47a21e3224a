//go:build !wedgetest

package stack

// stallForTest does nothing in real builds; see wedge_on.go.
func (*link) stallForTest() {}
