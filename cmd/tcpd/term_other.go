//go:build !linux

package main

import "os"

// isTerminal reports false off Linux, so that logs default to JSON.
func isTerminal(*os.File) bool { return false }

// isJournal reports false off Linux, where there is no systemd journal.
func isJournal(*os.File) bool { return false }
