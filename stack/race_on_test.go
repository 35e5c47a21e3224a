//go:build race

package stack

// raceDetector says the tests run under the race detector, which changes
// what the compiler can keep off the heap and slows every step enough for
// the netstack's sub-millisecond timers to fire: allocation and goroutine
// counts measured then are not the code's.
const raceDetector = true
