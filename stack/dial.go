package stack

import "errors"

// errDialDenied is returned by the dialler's control hook when the address
// actually dialled is denied by the policy.
var errDialDenied = errors.New("destination denied by policy")
