package bench

import (
	"bytes"
	"io"
	"testing"
	"time"
)

func TestSoakHeaderRoundTrip(t *testing.T) {
	h := soakHeader{scenario: soakServerReset, id: 1 << 40, n: 5, m: 1 << 30, k: 7, idle: 1500 * time.Millisecond}
	got, err := readSoakHeader(bytes.NewReader(h.marshal()))
	if err != nil || got != h {
		t.Fatalf("read %+v, %v; wrote %+v", got, err, h)
	}
	if _, err := readSoakHeader(bytes.NewReader(bytes.Repeat([]byte{'x'}, soakHeaderLen))); err == nil {
		t.Fatal("garbage read as a header")
	}
}

func TestVerifier(t *testing.T) {
	var want bytes.Buffer
	io.Copy(&want, soakStream(9, true, 200<<10))
	v := newVerifier(9, true, 200<<10)
	if n, err := io.Copy(v, bytes.NewReader(want.Bytes())); err != nil || n != 200<<10 || v.wrong || v.n != 200<<10 {
		t.Fatalf("the right stream: copied %d, %v; verifier %d bytes, wrong %v", n, err, v.n, v.wrong)
	}
	b := append([]byte(nil), want.Bytes()...)
	b[100<<10] ^= 1
	v = newVerifier(9, true, 200<<10)
	io.Copy(v, bytes.NewReader(b))
	if !v.wrong || v.n >= 100<<10+1 {
		t.Fatalf("one flipped bit: wrong %v after %d bytes", v.wrong, v.n)
	}
	// The server's stream is not the client's.
	v = newVerifier(9, false, 200<<10)
	io.Copy(v, bytes.NewReader(want.Bytes()))
	if !v.wrong {
		t.Fatal("the client's stream passed for the server's")
	}
}
