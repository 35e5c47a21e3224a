package main

import (
	"os"
	"path/filepath"
	"testing"
)

func TestCgroupLimitAt(t *testing.T) {
	write := func(t *testing.T, root, rel, val string) {
		t.Helper()
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(val+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name  string
		files map[string]string // path under root -> content
		self  string            // /proc/self/cgroup
		want  int64
	}{
		{"v2 own limit",
			map[string]string{"system.slice/tcpd.service/memory.max": "536870912"},
			"0::/system.slice/tcpd.service", 512 << 20},
		{"v2 no limit",
			map[string]string{"system.slice/tcpd.service/memory.max": "max"},
			"0::/system.slice/tcpd.service", 0},
		{"v2 parent slice binds tighter",
			map[string]string{
				"system.slice/tcpd.service/memory.max": "max",
				"system.slice/memory.max":              "268435456",
			},
			"0::/system.slice/tcpd.service", 256 << 20},
		{"v2 host cgroupns in a container: path absent, mount root holds the limit",
			map[string]string{"memory.max": "1073741824"},
			"0::/kubepods.slice/pod1/cri-abc.scope", 1 << 30},
		{"v1 own limit",
			map[string]string{"memory/system.slice/tcpd.service/memory.limit_in_bytes": "536870912"},
			"12:memory:/system.slice/tcpd.service\n3:cpu,cpuacct:/system.slice/tcpd.service", 512 << 20},
		{"v1 unlimited is a number near 2^63",
			map[string]string{"memory/system.slice/tcpd.service/memory.limit_in_bytes": "9223372036854771712"},
			"12:memory:/system.slice/tcpd.service", 0},
		{"v1 host cgroupns in a container",
			map[string]string{"memory/memory.limit_in_bytes": "805306368"},
			"9:memory:/libpod_parent/libpod-0123", 768 << 20},
		{"v1 controller listed with others",
			map[string]string{"memory/a/memory.limit_in_bytes": "1048576"},
			"5:memory,hugetlb:/a", 1 << 20},
		{"nothing readable", nil, "0::/x", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			for rel, val := range tc.files {
				write(t, root, rel, val)
			}
			if got := cgroupLimitAt(root, tc.self); got != tc.want {
				t.Errorf("cgroupLimitAt = %d, want %d", got, tc.want)
			}
		})
	}
}
