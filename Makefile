# tcpd — build, demo and tests. Targets that touch namespaces or TUN devices
# need root.
GO      ?= go
BIN     := bin/tcpd
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
LDFLAGS := -X main.version=$(VERSION)

.PHONY: all build demo test test-short vet fmt clean

all: build

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/tcpd

# Runs tcpd on its embedded default configuration in throwaway network
# namespaces and sends real traffic through it.
demo: build
	$(GO) run ./internal/demo --tcpd $(BIN)

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

clean:
	rm -rf bin
