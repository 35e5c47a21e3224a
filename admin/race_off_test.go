//go:build !race

package admin_test

// raceDetector: see race_on_test.go.
const raceDetector = false
