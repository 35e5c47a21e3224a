package conntrack

// State is one end's TCP state (RFC 9293 3.3.2). String gives the label value
// node_exporter's tcpstat collector uses, so dashboards built for Linux hosts
// read tcpd the same way.
type State uint8

// The eleven states, in node_exporter's order of its label values.
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

var stateNames = [NumStates]string{
	StateClosed:      "close",
	StateListen:      "listen",
	StateSynSent:     "syn_sent",
	StateSynRecv:     "syn_recv",
	StateEstablished: "established",
	StateFinWait1:    "fin_wait1",
	StateFinWait2:    "fin_wait2",
	StateClosing:     "closing",
	StateTimeWait:    "time_wait",
	StateCloseWait:   "close_wait",
	StateLastAck:     "last_ack",
}

// ssNames are the names `ss` prints, for `tcpd conns`.
var ssNames = [NumStates]string{
	StateClosed:      "CLOSED",
	StateListen:      "LISTEN",
	StateSynSent:     "SYN-SENT",
	StateSynRecv:     "SYN-RECV",
	StateEstablished: "ESTAB",
	StateFinWait1:    "FIN-WAIT-1",
	StateFinWait2:    "FIN-WAIT-2",
	StateClosing:     "CLOSING",
	StateTimeWait:    "TIME-WAIT",
	StateCloseWait:   "CLOSE-WAIT",
	StateLastAck:     "LAST-ACK",
}

// String returns the node_exporter label value ("syn_recv", "time_wait", …).
func (s State) String() string {
	if s < NumStates {
		return stateNames[s]
	}
	return "unknown"
}

// SSName returns the name `ss` prints for the state ("SYN-RECV", "ESTAB", …).
func (s State) SSName() string {
	if s < NumStates {
		return ssNames[s]
	}
	return "UNKNOWN"
}

// ParseState accepts either spelling, case-insensitively.
func ParseState(name string) (State, bool) {
	for s := range NumStates {
		if equalFold(name, stateNames[s]) || equalFold(name, ssNames[s]) {
			return s, true
		}
	}
	return 0, false
}

func equalFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x == '-' {
			x = '_'
		}
		if y == '-' {
			y = '_'
		}
		if x != y {
			return false
		}
	}
	return true
}

// States lists every state, for exporters that show all of them.
func States() []State {
	out := make([]State, NumStates)
	for i := range out {
		out[i] = State(i)
	}
	return out
}
