# tcpd — build, demo and tests. Targets that touch namespaces or TUN devices
# need root.
GO      ?= go
BIN     := bin/tcpd
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
LDFLAGS := -X main.version=$(VERSION)

.PHONY: all build demo bench test test-short vet fmt clean deb

all: build

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/tcpd

# Runs tcpd on its embedded default configuration in throwaway network
# namespaces and sends real traffic through it.
demo: build
	$(GO) run ./internal/demo --tcpd $(BIN)

# Measures tcpd against the kernel's own forwarding in the same run (root:
# network namespaces and a TUN device): throughput, connection rate, connect
# latency, memory per idle connection, CPU per GB. About 3 minutes; prints a
# table and writes bench/out/results.json. See bench/README.md.
BENCHFLAGS ?=
bench:
	$(GO) build -o $(BIN) ./cmd/tcpd
	$(GO) build -o bin/tcpdbench ./bench/cmd/tcpdbench
	./bin/tcpdbench --tcpd $(BIN) --out bench/out/results.json $(BENCHFLAGS)

# The whole suite: vet, tier A (no privileges) and tier B (root: real TUN
# devices in network namespaces; skipped with a message when not root).
test: vet
	$(GO) test -count=1 -timeout 40m ./...

# Tier A only: no root, no namespaces.
test-short:
	$(GO) test -short -count=1 ./...

vet:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed: $$out"; exit 1; fi
	$(GO) vet ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

# The Debian package, bin/tcpd_<version>_<arch>.deb, built with dpkg-deb
# alone (deploy/deb/build.sh): the binary, the systemd unit, the sysusers
# file, /etc/tcpd/tcpd.yaml as a conffile, the dashboard and alert rules.
DEB_OUT ?= bin
deb:
	GO='$(GO)' sh deploy/deb/build.sh '$(DEB_OUT)' '$(VERSION)'

clean:
	rm -rf bin
