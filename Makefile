# aurae-cri: auraed (the Aurae daemon) and, later, aurae-cri (the CRI
# server). `make run` installs what is missing, builds and starts auraed;
# `make test` builds and runs every test (e2e included; they need root).

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := build

export PATH := $(CURDIR)/bin:/usr/local/go/bin:$(PATH)
GO ?= go
BIN := $(CURDIR)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

VERSION := $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/aurae-runtime/aurae-cri/pkg/version.Version=$(VERSION)

# libseccomp-dev, pkg-config and gcc build the pinned runc (hack/runc);
# libprotobuf-dev has the well-known .proto files (google/protobuf/empty.proto).
APT_PACKAGES := protobuf-compiler libprotobuf-dev runc conmon containerd busybox-static iproute2 libseccomp-dev pkg-config gcc libc6-dev
# apt_install installs the Debian packages of $(1) that are missing (apt-get
# update only then), so that deps stays quick and idempotent.
define apt_install
	@missing=""; \
	for p in $(1); do \
	  dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; \
	fi
endef

PROTOC_GEN_GO_VERSION := v1.36.10
PROTOC_GEN_GO_GRPC_VERSION := v1.5.1
GRPCURL_VERSION := v1.9.3
GOLANGCI_LINT_VERSION := v2.15.0
# The OCI runtime of pods: runc built from the Go module proxy by `make runc`
# (Debian 12's 1.1.5 lacks idmapped mounts and the 2025 security fixes).
# auraed and aurae-cri take RUNC by default (pods.PinnedRuntime).
RUNC_VERSION := v1.4.4
RUNC := /opt/aurae/bin/runc
# CRIU for CheckpointContainer and restores, built from Debian trixie's source
# package by `make criu` (Debian 12's 3.17.1 cannot dump on current kernels).
# auraed hands it to runc (pods.PinnedCRIU).
CRIU_VERSION := 4.1.1
CRIU := /opt/aurae/bin/criu
# The monitor of every container: conmon built statically by `make conmon`
# from the release's source as the Go module proxy serves it, checked
# against Go's checksum database and CONMON_SUM (40% of the private memory
# of Debian's dynamically linked conmon per container). auraed takes CONMON
# when it exists (pods.PinnedConmon), else Debian's conmon on PATH. 2.2.x:
# Debian's newest, 2.1.13, misses OOM kills on cgroup v2 (hack/conmon/build.sh).
CONMON_VERSION := 2.2.1
CONMON_SUM := h1:+GKuELyApbGvXA1jItXRAz4tAU4DAnnIOAp4rE45A1k=
CONMON := /opt/aurae/bin/conmon

# go test -timeout applies per package; sized for 2 cores with -race.
TEST_TIMEOUT ?= 20m
# The e2e benchmarks start 110 pods on each of four runtimes and run
# critest -benchmark on each: about an hour on 2 loaded cores.
BENCH_TIMEOUT ?= 120m
# Extra flags for `make run`, e.g. RUN_ARGS='--log-level debug'.
RUN_ARGS ?=

.PHONY: deps apt tools cni runc criu conmon cri-tools critest peers build run run-auraed test fuzz kubelet bench proto check-proto lint clean

## deps: install what is missing (Debian packages, pinned Go tools into ./bin, CNI plugins, runc, criu, conmon, crictl/critest)
deps: apt tools cni runc criu conmon cri-tools

## cri-tools: crictl (into ./bin) and critest of the cri-tools version pinned in hack/critest/go.mod, built into a cache
cri-tools:
	@start=$$(date +%s); dir=$$(hack/critest/build.sh); \
	cmp -s "$$dir/crictl" $(BIN)/crictl || install -D -m 0755 "$$dir/crictl" $(BIN)/crictl; \
	echo "cri-tools: $(BIN)/crictl, $$dir/critest ($$(( $$(date +%s) - start ))s)"

## runc: the pinned runc (RUNC_VERSION) built from the Go module proxy into RUNC (skipped when it answers that version)
runc: apt
	@start=$$(date +%s); $(SUDO) env PATH="$(PATH)" hack/runc/build.sh $(RUNC_VERSION) $(RUNC); \
	echo "runc: $(RUNC) is $(RUNC_VERSION) ($$(( $$(date +%s) - start ))s)"

## criu: the pinned CRIU (CRIU_VERSION) built from Debian trixie's verified source package into CRIU (skipped when it answers that version)
criu: apt
	@start=$$(date +%s); $(SUDO) hack/criu/build.sh $(CRIU_VERSION) $(CRIU); \
	echo "criu: $(CRIU) is $(CRIU_VERSION) ($$(( $$(date +%s) - start ))s)"

## conmon: the pinned conmon (CONMON_VERSION) built statically from its checked source (Go module proxy) into CONMON (skipped when it answers that version)
conmon: apt
	@start=$$(date +%s); $(SUDO) env PATH="$(PATH)" GO=$(GO) hack/conmon/build.sh $(CONMON_VERSION) $(CONMON_SUM) $(CONMON); \
	echo "conmon: $(CONMON) is $(CONMON_VERSION) ($$(( $$(date +%s) - start ))s)"

## cni: the standard CNI plugins (built from containernetworking/plugins) into /opt/cni/bin
cni:
	$(SUDO) env PATH="$(PATH)" GO=$(GO) hack/install-cni-plugins.sh /opt/cni/bin

apt:
	$(call apt_install,$(APT_PACKAGES))

# Each tool is (re)installed only when its pinned version's stamp is missing.
tools: $(BIN)/.protoc-gen-go-$(PROTOC_GEN_GO_VERSION) \
       $(BIN)/.protoc-gen-go-grpc-$(PROTOC_GEN_GO_GRPC_VERSION) \
       $(BIN)/.grpcurl-$(GRPCURL_VERSION) \
       $(BIN)/.golangci-lint-$(GOLANGCI_LINT_VERSION)

$(BIN)/.protoc-gen-go-$(PROTOC_GEN_GO_VERSION):
	GOBIN=$(BIN) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	@touch $@

$(BIN)/.protoc-gen-go-grpc-$(PROTOC_GEN_GO_GRPC_VERSION):
	GOBIN=$(BIN) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
	@touch $@

# Debian 12 has no grpcurl package: take Debian's when a release has one,
# else build the pinned version.
$(BIN)/.grpcurl-$(GRPCURL_VERSION):
	@if apt-cache show grpcurl >/dev/null 2>&1; then \
	  dpkg-query -W grpcurl >/dev/null 2>&1 || $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y grpcurl; \
	else \
	  echo "GOBIN=$(BIN) $(GO) install github.com/fullstorydev/grpcurl/cmd/grpcurl@$(GRPCURL_VERSION)"; \
	  GOBIN=$(BIN) $(GO) install github.com/fullstorydev/grpcurl/cmd/grpcurl@$(GRPCURL_VERSION); \
	fi
	@touch $@

$(BIN)/.golangci-lint-$(GOLANGCI_LINT_VERSION):
	GOBIN=$(BIN) $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
	@touch $@

## build: bin/auraed, bin/aurae-holder (its pod namespace holder, found beside auraed and aurae-cri), bin/aer (its command-line client) and bin/aurae-cri
build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/auraed ./cmd/auraed
	CGO_ENABLED=0 $(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/aurae-holder ./cmd/aurae-holder
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/aer ./cmd/aer
	@if [ -d cmd/aurae-cri ]; then \
	  echo '$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/aurae-cri ./cmd/aurae-cri'; \
	  $(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/aurae-cri ./cmd/aurae-cri; \
	fi

## run: deps + build, then aurae-cri (with an embedded auraed) in the foreground (root; ^C stops it)
run: deps build
	$(SUDO) $(BIN)/aurae-cri --write-default-cni-config $(RUN_ARGS)

## run-auraed: deps + build, then auraed alone in the foreground
run-auraed: deps build
	$(SUDO) $(BIN)/auraed $(RUN_ARGS)

## test: every test with the race detector, e2e included (the real kubelet and the VM pods too), then critest
test: deps build kubelet vm-image
	AURAE_KUBELET_E2E=1 $(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) ./...
	$(MAKE) fuzz
	$(MAKE) critest

# How long `make fuzz` runs each target (7 targets: 35 s of fuzzing, 1.5 min
# with building on 2 cores). A new interesting input is minimized for
# FUZZMINIMIZETIME at most: go's default (60 s) stalls a short run on the
# first large one.
FUZZTIME ?= 5s
FUZZMINIMIZETIME ?= 500x
FUZZ := $(GO) test -run '^$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZETIME)
## fuzz: the go test -fuzz targets of request validation and translation (CRI, ocispec, auraed's pods and cells), FUZZTIME each; seeds and found crashes under testdata/fuzz/
fuzz:
	$(FUZZ) -fuzz '^FuzzRunPodSandbox$$' ./pkg/cri/
	$(FUZZ) -fuzz '^FuzzCreateContainer$$' ./pkg/cri/
	$(FUZZ) -fuzz '^FuzzGenerate$$' ./pkg/ocispec/
	$(FUZZ) -fuzz '^FuzzValidPod$$' ./pkg/aurae/pods/
	$(FUZZ) -fuzz '^FuzzCheckSpec$$' ./pkg/aurae/pods/
	$(FUZZ) -fuzz '^FuzzCellAllocate$$' ./pkg/aurae/cells/
	$(FUZZ) -fuzz '^FuzzCellStart$$' ./pkg/aurae/cells/

# critest's parallelism: ginkgo processes (its Serial specs still run alone);
# 2 on 2 cores halves the run (~1.5 min instead of ~3) with the same results.
CRITEST_PARALLEL ?= 2
## critest: the CRI validation suite of cri-tools against aurae-cri; fails on a failure not in hack/critest/known-failures.txt
critest: cri-tools
	@start=$$(date +%s); \
	rc=0; AURAE_CRITEST=1 CRITEST_PARALLEL=$(CRITEST_PARALLEL) $(GO) test -count=1 -v -timeout 90m -run '^TestCritest$$' ./test/critest/ || rc=$$?; \
	echo "critest: make critest took $$(( $$(date +%s) - start ))s"; exit $$rc

## kubelet: build (or take from the cache) the pinned upstream kubelet the e2e tests run
kubelet:
	hack/kubelet/build.sh

## peers: the benchmarks' peer runtimes, built from the Go module proxy into the cache: containerd 2.x (hack/containerd2) and CRI-O (hack/crio); one that fails to build is left out of the benchmarks, which say why
peers: apt runc cni
	@for p in containerd2 crio; do \
	  start=$$(date +%s); \
	  if dir=$$(hack/$$p/build.sh); then echo "peers: $$p in $$dir ($$(( $$(date +%s) - start ))s)"; \
	  else echo "peers: $$p not built: the benchmarks leave it out" >&2; fi; \
	done

## bench: the benchmarks, 200 iterations each (the e2e ones compare with the peers in the same run)
bench: peers cri-tools
	$(GO) test -run '^$$' -bench . -benchtime=200x -timeout $(BENCH_TIMEOUT) ./...

## proto: regenerate the Go code beside the .proto files under api/
proto: $(BIN)/.protoc-gen-go-$(PROTOC_GEN_GO_VERSION) $(BIN)/.protoc-gen-go-grpc-$(PROTOC_GEN_GO_GRPC_VERSION)
	@command -v protoc >/dev/null || { echo "protoc missing: run make deps" >&2; exit 1; }
	hack/gen-proto.sh

## check-proto: fail when the committed generated code is not what `make proto` makes
check-proto: proto
	@git diff --exit-code -- api/ || { echo "api/: generated code differs from the committed one; run make proto and commit" >&2; exit 1; }
	@untracked="$$(git ls-files --others --exclude-standard -- api/)"; \
	if [ -n "$$untracked" ]; then echo "api/: generated files not committed: $$untracked" >&2; exit 1; fi

## lint: gofmt, go vet, golangci-lint (imports grouped std / third party / ours), go mod tidy
lint: $(BIN)/.golangci-lint-$(GOLANGCI_LINT_VERSION)
	@$(GO) mod tidy -diff >/dev/null || { echo "go.mod/go.sum are not tidy: run go mod tidy" >&2; $(GO) mod tidy -diff; exit 1; }
	@unformatted="$$(gofmt -l $$(git ls-files '*.go'; git ls-files --others --exclude-standard '*.go'))"; \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(BIN)/golangci-lint run --allow-parallel-runners ./...

clean:
	rm -f $(BIN)/auraed $(BIN)/aer $(BIN)/aurae-cri

## vm-deps: Debian packages for the guest image and its boot test (QEMU, kernel source and tools)
VM_APT_PACKAGES := qemu-system-x86 cpio lz4 e2fsprogs linux-source-6.1 flex bison bc libelf-dev libssl-dev build-essential xz-utils busybox-static crun conmon
vm-deps:
	$(call apt_install,$(VM_APT_PACKAGES))

## vm-image: guest kernel (vmlinux) and initramfs (static auraed as /init) into VM_IMAGE_DIR (cached)
VM_IMAGE_DIR ?= /var/lib/aurae/vm
vm-image: vm-deps conmon
	$(SUDO) env PATH="$(PATH)" GO=$(GO) hack/vm-image/build.sh $(VM_IMAGE_DIR)

.PHONY: vm-deps vm-image

## vm-cg2-deps: Debian packages of the cgroup v2 test VM (mmdebstrap, e2fsprogs, QEMU)
VM_CG2_APT_PACKAGES := mmdebstrap e2fsprogs qemu-system-x86
vm-cg2-deps:
	$(call apt_install,$(VM_CG2_APT_PACKAGES))

## vm-cg2-image: the cgroup v2 test VM (Debian 12 rootfs with systemd, Debian's kernel) into VM_CG2_DIR (cached by hash)
VM_CG2_DIR ?= /var/lib/aurae/vm-cg2
vm-cg2-image: vm-cg2-deps
	@start=$$(date +%s); $(SUDO) hack/vm-cg2/build.sh $(VM_CG2_DIR); \
	echo "vm-cg2-image: $$(( $$(date +%s) - start ))s"

## test-cgroup2: the tests whose paths differ on cgroup v2, in the cgroup v2 test VM (systemd PID 1, cgroup2 only), the CRI ones with both cgroup drivers and the kubelet with the systemd one; results in _output/cgroup2
test-cgroup2: vm-cg2-image runc conmon cni kubelet
	@start=$$(date +%s); rc=0; $(SUDO) env PATH="$(PATH)" GO=$(GO) hack/vm-cg2/run.sh $(VM_CG2_DIR) || rc=$$?; \
	echo "test-cgroup2: $$(( $$(date +%s) - start ))s"; exit $$rc

.PHONY: vm-cg2-deps vm-cg2-image test-cgroup2
