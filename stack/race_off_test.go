//go:build !race

package stack

// raceDetector: see race_on_test.go.
const raceDetector = false
