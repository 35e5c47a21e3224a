package main

import (
	"archive/tar"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// repoRoot is the tcpd repository: this module lives in deploy/image.
func repoRoot(t testing.TB) string {
	t.Helper()
	dir, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "cmd/tcpd")); err != nil {
		t.Fatalf("repository root: %v", err)
	}
	return dir
}

var static struct {
	once sync.Once
	path string
	err  error
}

// staticTCPD builds cmd/tcpd as "make image" does (CGO_ENABLED=0), once.
func staticTCPD(t testing.TB) string {
	t.Helper()
	static.once.Do(func() {
		dir, err := os.MkdirTemp("", "tcpd-image-test-")
		if err != nil {
			static.err = err
			return
		}
		static.path = filepath.Join(dir, "tcpd")
		cmd := exec.Command("go", "build", "-trimpath", "-o", static.path, "./cmd/tcpd")
		cmd.Dir = repoRoot(t)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			static.err = errors.New(string(out))
		}
	})
	if static.err != nil {
		t.Fatalf("go build ./cmd/tcpd: %v", static.err)
	}
	return static.path
}

func TestMain(m *testing.M) {
	code := m.Run()
	if static.path != "" {
		os.RemoveAll(filepath.Dir(static.path))
	}
	os.Exit(code)
}

// buildArchive runs the command as "make image" does and returns the
// archive's path and what the command printed.
func buildArchive(t *testing.T, version, created string) (string, string) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "tcpd-image.tar")
	var stdout bytes.Buffer
	err := run([]string{
		"-binary", staticTCPD(t),
		"-config", filepath.Join(repoRoot(t), "configs/tcpd.yaml"),
		"-version", version, "-created", created, "-out", out,
	}, &stdout)
	if err != nil {
		t.Fatal(err)
	}
	return out, stdout.String()
}

// openArchive unpacks an OCI archive and returns its one image and the
// index entry's annotations.
func openArchive(t *testing.T, archive string) (v1.Image, map[string]string) {
	t.Helper()
	dir := t.TempDir()
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(h.Name, "..") || filepath.IsAbs(h.Name) {
			t.Fatalf("archive entry %q escapes the archive", h.Name)
		}
		p := filepath.Join(dir, h.Name)
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
		case tar.TypeReg:
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, b, 0o644); err != nil {
				t.Fatal(err)
			}
		default:
			t.Fatalf("archive entry %q has type %c", h.Name, h.Typeflag)
		}
	}
	lp, err := layout.FromPath(dir)
	if err != nil {
		t.Fatalf("not an OCI layout: %v", err)
	}
	idx, err := lp.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 {
		t.Fatalf("index has %d manifests, want 1", len(im.Manifests))
	}
	d := im.Manifests[0]
	if d.MediaType != types.OCIManifestSchema1 {
		t.Errorf("index entry media type %s, want %s", d.MediaType, types.OCIManifestSchema1)
	}
	img, err := idx.Image(d.Digest)
	if err != nil {
		t.Fatal(err)
	}
	return img, d.Annotations
}

// file is one entry of the image's file system.
type file struct {
	hdr  *tar.Header
	body []byte
}

func imageFiles(t *testing.T, img v1.Image) map[string]file {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != 1 {
		t.Fatalf("%d layers, want 1", len(layers))
	}
	mt, err := layers[0].MediaType()
	if err != nil || mt != types.OCILayer {
		t.Errorf("layer media type %s (%v), want %s", mt, err, types.OCILayer)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	files := map[string]file{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		files["/"+strings.TrimSuffix(h.Name, "/")] = file{h, b}
	}
	return files
}

// decodeFileCap decodes a security.capability xattr (vfs_cap_data) into
// its capability numbers and effective flag.
func decodeFileCap(t *testing.T, x string) (permitted []int, inheritable uint64, effective bool) {
	t.Helper()
	b := []byte(x)
	if len(b) != 20 {
		t.Fatalf("security.capability is %d bytes, want 20 (revision 2)", len(b))
	}
	magic := binary.LittleEndian.Uint32(b)
	if magic&0xff000000 != 0x02000000 {
		t.Fatalf("security.capability revision %#x, want 2", magic>>24)
	}
	p := uint64(binary.LittleEndian.Uint32(b[4:])) | uint64(binary.LittleEndian.Uint32(b[12:]))<<32
	inheritable = uint64(binary.LittleEndian.Uint32(b[8:])) | uint64(binary.LittleEndian.Uint32(b[16:]))<<32
	for c := 0; c < 64; c++ {
		if p&(1<<c) != 0 {
			permitted = append(permitted, c)
		}
	}
	return permitted, inheritable, magic&1 != 0
}

// TestImage builds the image as "make image" does and checks what a
// runtime reads from it: the OCI media types, the name, the user, the
// entrypoint, the files, their owners and modes, and the one capability
// the binary gets at exec.
func TestImage(t *testing.T) {
	archive, printed := buildArchive(t, "v1.2.3", "1700000000")
	img, anns := openArchive(t, archive)
	if got := anns[refNameAnnotation]; got != "localhost/tcpd:v1.2.3" {
		t.Errorf("image name %q, want localhost/tcpd:v1.2.3", got)
	}
	digest, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if want := archive + " localhost/tcpd:v1.2.3 " + digest.String() + "\n"; printed != want {
		t.Errorf("printed %q, want %q", printed, want)
	}
	mt, err := img.MediaType()
	if err != nil || mt != types.OCIManifestSchema1 {
		t.Errorf("manifest media type %s (%v)", mt, err)
	}
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	if m.Config.MediaType != types.OCIConfigJSON {
		t.Errorf("config media type %s, want %s", m.Config.MediaType, types.OCIConfigJSON)
	}
	if m.Annotations["org.opencontainers.image.version"] != "v1.2.3" {
		t.Errorf("manifest annotations %v lack the version", m.Annotations)
	}

	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	created := time.Unix(1700000000, 0).UTC()
	if cf.OS != "linux" || cf.Architecture != runtime.GOARCH || !cf.Created.Time.Equal(created) {
		t.Errorf("os/arch/created %s/%s/%v, want linux/%s/%v", cf.OS, cf.Architecture, cf.Created, runtime.GOARCH, created)
	}
	c := cf.Config
	if c.User != "65532:65532" {
		t.Errorf("user %q, want 65532:65532 (non-root)", c.User)
	}
	if !slices.Equal(c.Entrypoint, []string{"/usr/bin/tcpd"}) || !slices.Equal(c.Cmd, []string{"run", "--config", "/etc/tcpd/tcpd.yaml"}) {
		t.Errorf("entrypoint %q cmd %q", c.Entrypoint, c.Cmd)
	}
	if _, ok := c.ExposedPorts["9810/tcp"]; !ok || len(c.ExposedPorts) != 1 {
		t.Errorf("exposed ports %v, want 9810/tcp", c.ExposedPorts)
	}
	if c.StopSignal != "SIGTERM" || !slices.Contains(c.Env, "PATH=/usr/bin") {
		t.Errorf("stop signal %q env %q", c.StopSignal, c.Env)
	}
	if c.Labels["org.opencontainers.image.version"] != "v1.2.3" || c.Labels["org.opencontainers.image.title"] != "tcpd" {
		t.Errorf("labels %v", c.Labels)
	}

	files := imageFiles(t, img)
	bin, err := os.ReadFile(staticTCPD(t))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := os.ReadFile(filepath.Join(repoRoot(t), "configs/tcpd.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		path     string
		typ      byte
		mode     int64
		uid, gid int
		body     []byte
	}{
		{"/etc", tar.TypeDir, 0o755, 0, 0, nil},
		{"/etc/group", tar.TypeReg, 0o644, 0, 0, []byte("root:x:0:\ntcpd:x:65532:\n")},
		{"/etc/passwd", tar.TypeReg, 0o644, 0, 0, []byte("root:x:0:0:root:/root:/sbin/nologin\ntcpd:x:65532:65532:tcpd:/nonexistent:/sbin/nologin\n")},
		{"/etc/tcpd", tar.TypeDir, 0o755, 0, 0, nil},
		{"/etc/tcpd/tcpd.yaml", tar.TypeReg, 0o644, 0, 0, cfg},
		{"/run", tar.TypeDir, 0o755, 0, 0, nil},
		{"/run/tcpd", tar.TypeDir, 0o750, 65532, 65532, nil},
		{"/usr", tar.TypeDir, 0o755, 0, 0, nil},
		{"/usr/bin", tar.TypeDir, 0o755, 0, 0, nil},
		{"/usr/bin/tcpd", tar.TypeReg, 0o755, 0, 0, bin},
	}
	for _, w := range want {
		f, ok := files[w.path]
		if !ok {
			t.Errorf("%s missing", w.path)
			continue
		}
		h := f.hdr
		if h.Typeflag != w.typ || h.Mode != w.mode || h.Uid != w.uid || h.Gid != w.gid {
			t.Errorf("%s: type %c mode %o owner %d:%d, want %c %o %d:%d", w.path, h.Typeflag, h.Mode, h.Uid, h.Gid, w.typ, w.mode, w.uid, w.gid)
		}
		if !h.ModTime.Equal(created) {
			t.Errorf("%s: mtime %v, want %v", w.path, h.ModTime, created)
		}
		if w.body != nil && !bytes.Equal(f.body, w.body) {
			t.Errorf("%s: contents differ from the input (%d bytes, want %d)", w.path, len(f.body), len(w.body))
		}
	}
	if len(files) != len(want) {
		var names []string
		for n := range files {
			names = append(names, n)
		}
		slices.Sort(names)
		t.Errorf("the image holds %v; want exactly the %d entries above", names, len(want))
	}

	// The one capability tcpd needs, granted at exec to the unprivileged
	// user; nothing inheritable.
	capX, ok := files["/usr/bin/tcpd"].hdr.PAXRecords["SCHILY.xattr.security.capability"]
	if !ok {
		t.Fatal("/usr/bin/tcpd has no security.capability: as user 65532 it would get no CAP_NET_ADMIN where the runtime sets no ambient capabilities (Kubernetes)")
	}
	perm, inh, eff := decodeFileCap(t, capX)
	if !slices.Equal(perm, []int{capNetAdmin}) || inh != 0 || !eff {
		t.Errorf("file capabilities: permitted %v inheritable %#x effective %v; want [12] (CAP_NET_ADMIN) 0 true", perm, inh, eff)
	}
}

// TestImageReproducible: the same inputs give the same bytes, so the
// digest identifies the contents; another creation time gives another.
func TestImageReproducible(t *testing.T) {
	a, _ := buildArchive(t, "v1", "1700000000")
	b, _ := buildArchive(t, "v1", "1700000000")
	c, _ := buildArchive(t, "v1", "1700000001")
	read := func(p string) []byte {
		x, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return x
	}
	if !bytes.Equal(read(a), read(b)) {
		t.Error("two builds from the same inputs differ")
	}
	if bytes.Equal(read(a), read(c)) {
		t.Error("builds with different -created are identical")
	}
}

// TestImageRejects: what cannot run from scratch, or is not asked for
// properly, is refused with a message that says why, and no archive is
// written.
func TestImageRejects(t *testing.T) {
	dir := t.TempDir()
	notELF := filepath.Join(dir, "script")
	if err := os.WriteFile(notELF, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	dynamic, err := exec.LookPath("ls") // linked against libc
	if err != nil {
		t.Skip("no ls to serve as a dynamically linked binary")
	}
	cfg := filepath.Join(repoRoot(t), "configs/tcpd.yaml")
	out := filepath.Join(dir, "out.tar")
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"not ELF", []string{"-binary", notELF, "-config", cfg, "-out", out}, "not an ELF executable"},
		{"dynamic", []string{"-binary", dynamic, "-config", cfg, "-out", out}, "CGO_ENABLED=0"},
		{"no config", []string{"-binary", staticTCPD(t), "-config", filepath.Join(dir, "none.yaml"), "-out", out}, "config:"},
		{"bad created", []string{"-binary", staticTCPD(t), "-config", cfg, "-out", out, "-created", "yesterday"}, "not Unix seconds"},
		{"bad tag", []string{"-binary", staticTCPD(t), "-config", cfg, "-out", out, "-version", "v1+dirty"}, "image name"},
		{"missing -out", []string{"-binary", staticTCPD(t), "-config", cfg}, "required"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var stdout bytes.Buffer
			err := run(c.args, &stdout)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %v, want one containing %q", err, c.want)
			}
			if _, err := os.Stat(out); err == nil {
				t.Errorf("%s was written", out)
			}
		})
	}
}
