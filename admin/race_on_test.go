//go:build race

package admin_test

// raceDetector says the tests run under the race detector, which changes
// what the compiler can keep off the heap: allocations measured then are
// not the code's.
const raceDetector = true
