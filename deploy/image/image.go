package main

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// The image's fixed layout. deploy/kubernetes and the tests name these.
const (
	binaryPath = "/usr/bin/tcpd"
	configPath = "/etc/tcpd/tcpd.yaml"
	// runDir holds the admin socket (admin.socket in the default
	// configuration), writable by the tcpd user.
	runDir = "/run/tcpd"
	// uid and gid of the unprivileged tcpd user, as distroless's
	// "nonroot": no host account has them by accident.
	uid = 65532
	gid = 65532
	// metricsPort is the port of metrics.listen in the default
	// configuration.
	metricsPort = "9810/tcp"
)

// capNetAdmin is CAP_NET_ADMIN's number (linux/capability.h).
const capNetAdmin = 12

// spec is what goes into the image.
type spec struct {
	// Binary is a statically linked tcpd for Linux.
	Binary string
	// Config is the configuration installed at configPath.
	Config string
	// Version labels the image (org.opencontainers.image.version).
	Version string
	// Created is the image's creation time and every file's mtime, so that
	// the same inputs always give the same image digest.
	Created time.Time
}

// build makes the image: one layer holding the binary (with the file
// capability cap_net_admin+ep, so that the unprivileged user gets
// CAP_NET_ADMIN at exec from a runtime that grants it to the container but
// sets no ambient capabilities, as Kubernetes does), the configuration, the
// user and group, and the admin socket's directory; run as tcpd:tcpd.
func build(s spec) (v1.Image, error) {
	arch, err := checkBinary(s.Binary)
	if err != nil {
		return nil, err
	}
	bin, err := os.ReadFile(s.Binary)
	if err != nil {
		return nil, err
	}
	cfg, err := os.ReadFile(s.Config)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	layerTar, err := layerFiles(bin, cfg, s.Created)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}

	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{
		Layer: layer,
		History: v1.History{
			Created:   v1.Time{Time: s.Created},
			CreatedBy: "deploy/image: tcpd " + s.Version,
			Comment:   "tcpd, its default configuration, user tcpd, " + runDir,
		},
	})
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS = "linux"
	cf.Architecture = arch
	cf.Created = v1.Time{Time: s.Created}
	cf.Author = "tcpd"
	cf.Config = v1.Config{
		User:       strconv.Itoa(uid) + ":" + strconv.Itoa(gid),
		Entrypoint: []string{binaryPath},
		Cmd:        []string{"run", "--config", configPath},
		Env:        []string{"PATH=/usr/bin"},
		WorkingDir: "/",
		// SIGTERM drains for shutdown_grace; the runtime's stop timeout
		// (Kubernetes' terminationGracePeriodSeconds) must be longer.
		StopSignal:   "SIGTERM",
		ExposedPorts: map[string]struct{}{metricsPort: {}},
		Labels:       labels(s.Version, s.Created),
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, err
	}
	return mutate.Annotations(img, labels(s.Version, s.Created)).(v1.Image), nil
}

// labels are the OCI annotations, on the manifest and as config labels.
func labels(version string, created time.Time) map[string]string {
	return map[string]string{
		"org.opencontainers.image.title":       "tcpd",
		"org.opencontainers.image.description": "tcpd, the userspace TCP terminator of a VPN gateway. Needs CAP_NET_ADMIN and /dev/net/tun.",
		"org.opencontainers.image.version":     version,
		"org.opencontainers.image.created":     created.UTC().Format(time.RFC3339),
	}
}

// checkBinary makes sure path is a static Linux ELF executable, which a
// from-scratch image can run, and returns its GOARCH.
func checkBinary(path string) (string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return "", fmt.Errorf("binary %s: not an ELF executable: %w", path, err)
	}
	defer f.Close()
	if f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		return "", fmt.Errorf("binary %s: ELF type %v, not an executable", path, f.Type)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return "", fmt.Errorf("binary %s is dynamically linked (it has an interpreter); build it with CGO_ENABLED=0", path)
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		return "", fmt.Errorf("binary %s needs shared libraries %v; build it with CGO_ENABLED=0", path, libs)
	}
	arch, ok := map[elf.Machine]string{
		elf.EM_X86_64:  "amd64",
		elf.EM_AARCH64: "arm64",
		elf.EM_386:     "386",
		elf.EM_ARM:     "arm",
		elf.EM_PPC64:   "ppc64le",
		elf.EM_S390:    "s390x",
		elf.EM_RISCV:   "riscv64",
	}[f.Machine]
	if !ok {
		return "", fmt.Errorf("binary %s: machine %v is not one tcpd is built for", path, f.Machine)
	}
	return arch, nil
}

// fileCap returns the security.capability extended attribute (struct
// vfs_cap_data, revision 2, linux/capability.h) that grants caps as
// permitted and effective at exec: "setcap cap_...+ep".
func fileCap(caps ...uint) string {
	const (
		vfsCapRevision2     = 0x02000000
		vfsCapFlagsEffectve = 0x000001
	)
	var permitted [2]uint32
	for _, c := range caps {
		permitted[c/32] |= 1 << (c % 32)
	}
	b := make([]byte, 20)
	binary.LittleEndian.PutUint32(b[0:], vfsCapRevision2|vfsCapFlagsEffectve)
	binary.LittleEndian.PutUint32(b[4:], permitted[0]) // permitted, low word
	binary.LittleEndian.PutUint32(b[8:], 0)            // inheritable, low word
	binary.LittleEndian.PutUint32(b[12:], permitted[1])
	binary.LittleEndian.PutUint32(b[16:], 0)
	return string(b)
}

// layerFiles returns the layer's uncompressed tar: directories before
// their contents, sorted, every mtime set to created.
func layerFiles(bin, cfg []byte, created time.Time) ([]byte, error) {
	passwd := fmt.Sprintf("root:x:0:0:root:/root:/sbin/nologin\ntcpd:x:%d:%d:tcpd:/nonexistent:/sbin/nologin\n", uid, gid)
	group := fmt.Sprintf("root:x:0:\ntcpd:x:%d:\n", gid)
	type entry struct {
		hdr  tar.Header
		body []byte
	}
	dir := func(name string, mode int64, owner int) entry {
		return entry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode, Uid: owner, Gid: owner}}
	}
	file := func(name string, mode int64, body []byte) entry {
		return entry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(body))}, body: body}
	}
	binEntry := file("usr/bin/tcpd", 0o755, bin)
	binEntry.hdr.PAXRecords = map[string]string{"SCHILY.xattr.security.capability": fileCap(capNetAdmin)}
	entries := []entry{
		dir("etc", 0o755, 0),
		file("etc/group", 0o644, []byte(group)),
		file("etc/passwd", 0o644, []byte(passwd)),
		dir("etc/tcpd", 0o755, 0),
		file("etc/tcpd/tcpd.yaml", 0o644, cfg),
		dir("run", 0o755, 0),
		dir("run/tcpd", 0o750, uid),
		dir("usr", 0o755, 0),
		dir("usr/bin", 0o755, 0),
		binEntry,
	}
	sort.SliceStable(entries, func(i, j int) bool { return entries[i].hdr.Name < entries[j].hdr.Name })
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.hdr
		h.ModTime = created
		h.Format = tar.FormatPAX
		if h.Uid != 0 {
			h.Uname, h.Gname = "tcpd", "tcpd"
		} else {
			h.Uname, h.Gname = "root", "root"
		}
		if err := tw.WriteHeader(&h); err != nil {
			return nil, fmt.Errorf("layer: %s: %w", h.Name, err)
		}
		if _, err := tw.Write(e.body); err != nil {
			return nil, fmt.Errorf("layer: %s: %w", h.Name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
