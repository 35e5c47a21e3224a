# tcpd — build, demo and tests. Targets that touch namespaces or TUN devices
# need root.
# go from PATH, else from /usr/local/go, where Go's own archive installs it:
# sudo replaces PATH with its secure_path, which leaves that out, so that
# "sudo make demo" would find no go.
ifeq ($(origin GO),undefined)
GO      := $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)
endif
# The gofmt of the same Go installation as $(GO).
GOFMT   ?= $(shell '$(GO)' env GOROOT 2>/dev/null)/bin/gofmt
BIN     := bin/tcpd
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
LDFLAGS := -X main.version=$(VERSION)

.PHONY: all build demo bench bench-base bench-scaling test test-one-queue test-race test-short fuzz vet fmt clean deb image

all: build

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/tcpd

# Runs tcpd on its embedded default configuration in throwaway network
# namespaces and sends real traffic through it.
demo: build
	$(GO) run ./internal/demo --tcpd $(BIN)

# Measures tcpd against the kernel's own forwarding in the same run (root:
# network namespaces and a TUN device): throughput, connection rate and
# tcpd's cost per connection, connect latency, memory per idle connection,
# CPU per GB, and tun.queues 1 against auto (8 streams each way, connections
# from 64 client addresses). About 6 minutes; prints a table and writes
# bench/out/results.json. See bench/README.md.
BENCHFLAGS ?=
bench:
	$(GO) build -o $(BIN) ./cmd/tcpd
	$(GO) build -o bin/tcpdbench ./bench/cmd/tcpdbench
	./bin/tcpdbench --tcpd $(BIN) --out bench/out/results.json $(BENCHFLAGS)

# Builds bin/tcpd-base from the commit BASE (default: main), built as
# "make bench" builds bin/tcpd, for before/after runs:
# make bench-base BASE=<commit> && sudo make bench BENCHFLAGS='--base bin/tcpd-base'
BASE ?= main
bench-base:
	rm -rf bin/base-src && mkdir -p bin/base-src
	git archive $(BASE) | tar -x -C bin/base-src
	cd bin/base-src && $(GO) build -o ../tcpd-base ./cmd/tcpd
	rm -rf bin/base-src

# Go benchmarks of how the packet path scales with the number of packet
# loops (one per TUN queue): the receive path (parse, checks, conntrack,
# delivery into the netstack) and the connection manager's table, at each
# -cpu of SCALING_CPUS, SCALING_COUNT times; time and lock wait per
# operation, then the medians. SCALING_BASE=<commit> runs that commit's
# benchmarks too, interleaved. No root needed. See bench/README.md.
SCALING_CPUS  ?= 1,2,4,8,16
SCALING_COUNT ?= 3
SCALING_BASE  ?=
bench-scaling:
	GO='$(GO)' SCALING_CPUS='$(SCALING_CPUS)' SCALING_COUNT='$(SCALING_COUNT)' sh bench/scaling.sh $(SCALING_BASE)

# Go modules of their own under deploy/, so that the daemon's go.mod stays
# lean: the image builder (go-containerregistry) and the Kubernetes
# manifests' tests (k8s.io/api, the Prometheus Operator's types). "go test
# ./..." at the root does not enter them; test and vet do.
SUBMODULES := deploy/image deploy/kubernetes

# The whole suite: vet, tier A (no privileges) and tier B (root: real TUN
# devices in network namespaces; skipped with a message when not root), in
# the main module and in each of SUBMODULES.
test: vet
	$(GO) test -count=1 -timeout 40m ./...
	@for m in $(SUBMODULES); do echo "cd $$m && $(GO) test -count=1 -timeout 20m ./..."; (cd $$m && $(GO) test -count=1 -timeout 20m ./...) || exit 1; done
	$(MAKE) --no-print-directory fuzz

# Each fuzz target for FUZZTIME, on new inputs: what arrives from the
# network (segments through the connection table and through a running
# stack, TCP headers, the MSS clamp), the destination policy, the
# configuration file and the admin API's connection filter (e2e
# TestMakeFuzzRunsEveryTarget keeps this list whole). `go test` above runs
# only their seeds (testdata/fuzz); a failing input found here is written
# there, to be committed with the fix as a seed. `make fuzz FUZZTIME=10m` for longer.
FUZZTIME ?= 20s
FUZZ_TARGETS = ./conntrack:FuzzSegments ./stack:FuzzInbound ./stack:FuzzParseTCP ./stack:FuzzSetMSS ./policy:FuzzCheck ./cmd/tcpd:FuzzParseConfig ./admin:FuzzParseFilter
#
# Go 1.26's fuzzing engine may fail a target with a bare "context deadline
# exceeded" as -fuzztime runs out, having found nothing (go.dev/issue/75804,
# fixed in Go 1.27): a target that ends so, with no failing input written,
# runs once more; any other failure fails.
fuzz:
	@for t in $(FUZZ_TARGETS); do pkg=$${t%%:*}; fn=$${t##*:}; \
		for try in 1 2; do \
			echo "$(GO) test -run '^$$' -fuzz '^$$fn$$' -fuzztime $(FUZZTIME) $$pkg"; \
			out=$$($(GO) test -run '^$$' -fuzz "^$$fn\$$" -fuzztime $(FUZZTIME) $$pkg 2>&1); rc=$$?; echo "$$out"; \
			[ $$rc -eq 0 ] && break; \
			if [ $$try -eq 1 ] && echo "$$out" | grep -q 'context deadline exceeded' && ! echo "$$out" | grep -q 'Failing input written'; then \
				echo "fuzz: $$fn ended on the engine's deadline race (go.dev/issue/75804) with no failing input: once more"; continue; fi; \
			exit 1; \
		done; done

# The root tests on the real binary (e2e) once more with tcpd's TUN on one
# queue (tun.queues: 1). `make test` runs them with tun.queues auto (a queue
# per CPU), and its state-truth tests in both modes.
test-one-queue:
	TCPD_E2E_TUN_QUEUES=1 $(GO) test -count=1 -timeout 40m ./e2e/

# The packages whose goroutines share state (the netstack glue, the
# connection table, the collectors), under the race detector. Not part of
# test: it triples their run time, and tests that count allocations or
# goroutines skip those counts under it.
test-race:
	$(GO) test -race -count=1 -timeout 20m ./stack/ ./conntrack/ ./metrics/ ./admin/ ./policy/

# Tier A only: no root, no namespaces.
test-short:
	$(GO) test -short -count=1 ./...
	@for m in $(SUBMODULES); do (cd $$m && $(GO) test -short -count=1 ./...) || exit 1; done

# The format check fails when gofmt cannot run, instead of finding nothing
# to complain about.
vet:
	@files=$$(git ls-files '*.go') && [ -n "$$files" ] || { echo "vet: no Go files listed by git ls-files"; exit 1; }; \
	out=$$('$(GOFMT)' -l $$files) || { echo "vet: $(GOFMT) -l failed"; exit 1; }; \
	if [ -n "$$out" ]; then echo "gofmt needed: $$out"; exit 1; fi
	$(GO) vet ./...
	@# tcpd runs on Linux; elsewhere it must still build (stack's *_other.go).
	GOOS=darwin $(GO) build ./...
	@for m in $(SUBMODULES); do echo "cd $$m && $(GO) vet ./..."; (cd $$m && $(GO) vet ./...) || exit 1; done

fmt:
	'$(GOFMT)' -w $$(git ls-files '*.go')

# The Debian package, bin/tcpd-gateway_<version>_<arch>.deb ("tcpd" is
# Debian's TCP wrappers), built with dpkg-deb alone (deploy/deb/build.sh):
# the binary, the systemd unit, the sysusers file, /etc/tcpd/tcpd.yaml as a
# conffile, copyright and changelog, the dashboard and alert rules.
# DEB_VERSION increases along main's history (deploy/deb/version.sh:
# 0~git<commit date>.<hash> before the first tag vX.Y.Z), so that each
# newer build installs as an upgrade; outside a git checkout it is 0~devel.
DEB_OUT ?= bin
DEB_VERSION ?= $(shell sh deploy/deb/version.sh 2>/dev/null || echo 0~devel)
deb:
	GO='$(GO)' sh deploy/deb/build.sh '$(DEB_OUT)' '$(VERSION)' '$(DEB_VERSION)'

# The container image, an OCI archive (bin/tcpd-image.tar) built offline
# from scratch by deploy/image: the static binary, the default
# configuration, user tcpd (65532), CAP_NET_ADMIN as the binary's file
# capability. Load it with "podman load -i bin/tcpd-image.tar"; see
# deploy/README.md. The same commit gives the same digest.
IMAGE_OUT ?= bin/tcpd-image.tar
IMAGE_BIN ?= bin/image/tcpd
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
image:
	mkdir -p $(dir $(IMAGE_BIN)) $(dir $(IMAGE_OUT))
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(IMAGE_BIN) ./cmd/tcpd
	cd deploy/image && $(GO) run . -binary $(abspath $(IMAGE_BIN)) -config $(abspath configs/tcpd.yaml) \
		-version '$(VERSION)' -created '$(SOURCE_DATE_EPOCH)' -out $(abspath $(IMAGE_OUT))

clean:
	rm -rf bin
