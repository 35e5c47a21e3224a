package netlab

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestSweepRemovesOrphanedLab plays a test binary that died holding a lab:
// its namespaces exist and its owner file names a process that is gone. The
// next sweep must remove them, and leave a live owner's lab alone.
func TestSweepRemovesOrphanedLab(t *testing.T) {
	if why := Available(); why != "" {
		t.Skip(why)
	}
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	orphan, err := randomID()
	if err != nil {
		t.Fatal(err)
	}
	live, err := randomID()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, id := range []string{orphan, live} {
		name := nsPrefix + id + "-g"
		ns, err := createNS(name)
		if err != nil {
			t.Fatal(err)
		}
		ns.close()
		names = append(names, name)
	}
	t.Cleanup(func() {
		for _, n := range names {
			deleteNS(n)
		}
		release(orphan)
		release(live)
	})
	if err := os.MkdirAll(ownerDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ownerDir, orphan), fmt.Appendf(nil, "%d 1\n", dead.Process.Pid), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := claim(live); err != nil {
		t.Fatal(err)
	}

	sweep()

	if _, err := os.Stat(filepath.Join(netnsDir, names[0])); !os.IsNotExist(err) {
		t.Fatalf("orphaned namespace %s survived the sweep (%v)", names[0], err)
	}
	if _, err := os.Stat(filepath.Join(ownerDir, orphan)); !os.IsNotExist(err) {
		t.Fatal("orphan's owner file survived the sweep")
	}
	if _, err := os.Stat(filepath.Join(netnsDir, names[1])); err != nil {
		t.Fatalf("a live owner's namespace was removed: %v", err)
	}
}
