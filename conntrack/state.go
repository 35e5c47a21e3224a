package conntrack

// State is one end's TCP state (RFC 9293 3.3.2). String gives the label value
// node_exporter's tcpstat collector uses, so dashboards built for Linux hosts
// read tcpd the same way; SSName the name `ss` prints.
type State uint8

// The eleven states, in node_exporter's order of its label values. Range
// over NumStates to visit every one.
const (
	StateClosed State = iota
	StateListen
	StateSynSent
	StateSynRecv
	StateEstablished
	StateFinWait1
	StateFinWait2
	StateClosing
	StateTimeWait
	StateCloseWait
	StateLastAck
	NumStates
)

// stateNames is the one table of the states' spellings: node_exporter's
// label value and the name `ss` prints, but for the closed state, which ss
// calls UNCONN (a socket not connected) and tcpd, whose closed ends were
// connections, CLOSED.
var stateNames = [NumStates]struct{ label, ss string }{
	StateClosed:      {"close", "CLOSED"},
	StateListen:      {"listen", "LISTEN"},
	StateSynSent:     {"syn_sent", "SYN-SENT"},
	StateSynRecv:     {"syn_recv", "SYN-RECV"},
	StateEstablished: {"established", "ESTAB"},
	StateFinWait1:    {"fin_wait1", "FIN-WAIT-1"},
	StateFinWait2:    {"fin_wait2", "FIN-WAIT-2"},
	StateClosing:     {"closing", "CLOSING"},
	StateTimeWait:    {"time_wait", "TIME-WAIT"},
	StateCloseWait:   {"close_wait", "CLOSE-WAIT"},
	StateLastAck:     {"last_ack", "LAST-ACK"},
}

// String returns the node_exporter label value ("syn_recv", "time_wait", …).
func (s State) String() string {
	if s < NumStates {
		return stateNames[s].label
	}
	return "unknown"
}

// SSName returns the name `ss` prints for the state ("SYN-RECV", "ESTAB", …).
func (s State) SSName() string {
	if s < NumStates {
		return stateNames[s].ss
	}
	return "UNKNOWN"
}

// ParseState accepts either spelling, case-insensitively, with '-' and '_'
// alike, and the names ss's own state filter takes that differ from both
// (listening; unconnected and unconn for ss's UNCONN).
func ParseState(name string) (State, bool) {
	for s := range NumStates {
		if equalFold(name, stateNames[s].label) || equalFold(name, stateNames[s].ss) {
			return s, true
		}
	}
	for _, a := range ssAliases {
		if equalFold(name, a.name) {
			return a.state, true
		}
	}
	return 0, false
}

// ssAliases are the spellings of ss's state filter and columns that are
// neither a label nor tcpd's printed name.
var ssAliases = [...]struct {
	name  string
	state State
}{
	{"listening", StateListen},
	{"unconnected", StateClosed},
	{"unconn", StateClosed},
}

func equalFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		if foldByte(a[i]) != foldByte(b[i]) {
			return false
		}
	}
	return true
}

func foldByte(c byte) byte {
	switch {
	case 'A' <= c && c <= 'Z':
		return c + 'a' - 'A'
	case c == '-':
		return '_'
	}
	return c
}

// Dir is the direction of a segment crossing the TUN, and of the bytes a
// relay moves, seen from the client. String gives the label value of the
// metrics' direction label.
type Dir uint8

const (
	// FromClient ("in"): the client sent it; tcpd's netstack receives it.
	// For a relay, bytes from the client to the destination.
	FromClient Dir = iota
	// ToClient ("out"): tcpd's netstack sent it; the client receives it.
	// For a relay, bytes from the destination to the client.
	ToClient
	// NumDirs counts the directions; range over it to visit both.
	NumDirs
)

var dirNames = [NumDirs]string{FromClient: "in", ToClient: "out"}

// String returns "in" or "out".
func (d Dir) String() string {
	if d < NumDirs {
		return dirNames[d]
	}
	return "unknown"
}
