package stack

import "testing"

// TestEnumNames checks that every enum's one table names each value, once:
// a value added without a name would export an empty label.
func TestEnumNames(t *testing.T) {
	tables := map[string][]string{
		"DropReason":  dropReasonNames[:],
		"Result":      resultNames[:],
		"DialFailure": dialFailureNames[:],
		"End":         endNames[:],
	}
	for enum, names := range tables {
		seen := map[string]bool{}
		for i, n := range names {
			if n == "" || seen[n] {
				t.Errorf("%s(%d) is named %q, empty or twice", enum, i, n)
			}
			seen[n] = true
		}
	}
	if DropTUNWriteError.String() != "tun_write_error" || NumDropReasons.String() != "unknown" ||
		ResultHandshakeFailed.String() != "handshake_failed" || DialOther.String() != "other" || EndAborted.String() != "aborted" {
		t.Error("String does not read the table")
	}
}
