// Command image builds tcpd's container image offline, without a daemon or
// a registry, and writes it as an OCI archive (a tar of an OCI image layout)
// that "podman load", "skopeo copy oci-archive:..." and containerd's "ctr
// images import" read:
//
//	go run . -binary ../../bin/image/tcpd -config ../../configs/tcpd.yaml \
//	    -version v1.2.3 -out ../../bin/tcpd-image.tar
//
// "make image" at the repository root does exactly this. The image is
// built from scratch: one layer with the static binary, the default
// configuration, an unprivileged user and the admin socket's directory. The
// same inputs and -created give the same digest.
package main

import (
	"archive/tar"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "image:", err)
		}
		os.Exit(2)
	}
}

func run(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("image", flag.ContinueOnError)
	binary := fs.String("binary", "", "statically linked tcpd `file` (CGO_ENABLED=0)")
	config := fs.String("config", "", "configuration `file` installed as "+configPath)
	version := fs.String("version", "devel", "tcpd's `version`: the image's tag and version label")
	repo := fs.String("name", "localhost/tcpd", "image `repository`; the tag is -version")
	out := fs.String("out", "", "OCI archive to write (a tar `file`)")
	created := fs.String("created", os.Getenv("SOURCE_DATE_EPOCH"), "creation time and file mtimes: Unix `seconds` (default $SOURCE_DATE_EPOCH, else 0)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *binary == "" || *config == "" || *out == "" || fs.NArg() != 0 {
		fs.Usage()
		return errors.New("-binary, -config and -out are required, and nothing else")
	}
	when := time.Unix(0, 0).UTC()
	if *created != "" {
		sec, err := strconv.ParseInt(*created, 10, 64)
		if err != nil {
			return fmt.Errorf("-created %q: not Unix seconds", *created)
		}
		when = time.Unix(sec, 0).UTC()
	}
	ref, err := name.NewTag(*repo+":"+*version, name.StrictValidation)
	if err != nil {
		return fmt.Errorf("image name %s:%s: %w", *repo, *version, err)
	}
	img, err := build(spec{Binary: *binary, Config: *config, Version: *version, Created: when})
	if err != nil {
		return err
	}
	if err := writeArchive(*out, ref, img, when); err != nil {
		return err
	}
	digest, err := img.Digest()
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s %s %s\n", *out, ref.Name(), digest)
	return nil
}

// refNameAnnotation names the image in the layout's index, for the tools
// that load an OCI archive.
const refNameAnnotation = "org.opencontainers.image.ref.name"

// writeArchive writes img as an OCI image layout inside a tar file at path,
// replacing it only once complete.
func writeArchive(path string, ref name.Tag, img v1.Image, mtime time.Time) error {
	dir, err := os.MkdirTemp("", "tcpd-image-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return fmt.Errorf("OCI layout: %w", err)
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{refNameAnnotation: ref.Name()})); err != nil {
		return fmt.Errorf("OCI layout: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tcpd-image-*.tar")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	werr := tarDir(tmp, dir, mtime)
	if err := errors.Join(werr, tmp.Close()); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// tarDir writes the tree under dir to w, sorted, owned by root, with every
// mtime set to mtime, so that the archive's bytes depend on its contents
// only.
func tarDir(w io.Writer, dir string, mtime time.Time) error {
	var names []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != dir {
			names = append(names, p)
		}
		return nil
	})
	if err != nil {
		return err
	}
	sort.Strings(names)
	tw := tar.NewWriter(w)
	for _, p := range names {
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		h := &tar.Header{Name: filepath.ToSlash(rel), ModTime: mtime, Format: tar.FormatPAX}
		switch {
		case fi.IsDir():
			h.Typeflag, h.Name, h.Mode = tar.TypeDir, h.Name+"/", 0o755
		case fi.Mode().IsRegular():
			h.Typeflag, h.Mode, h.Size = tar.TypeReg, 0o644, fi.Size()
		default:
			return fmt.Errorf("%s: unexpected file type %v in the layout", rel, fi.Mode())
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if h.Typeflag == tar.TypeReg {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			_, err = io.Copy(tw, f)
			f.Close()
			if err != nil {
				return err
			}
		}
	}
	return tw.Close()
}
