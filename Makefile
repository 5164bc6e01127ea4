# PlasmaCloud — build, test and development entry points. `make help` lists the targets.
#
# The repository is a Go workspace (go.work) of several modules. `go test ./...` from
# the root does not cross module boundaries, so every target below works on the list of
# workspace modules that `go list -m` prints: a new module added to go.work is built,
# tested, vetted and benchmarked without touching this file.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := build
.DELETE_ON_ERROR:

# Go lives in /usr/local/go on the project's machines; CI's PATH may not have it.
export PATH := /usr/local/go/bin:$(PATH)

GO       ?= go
BIN_DIR  := $(CURDIR)/bin
TOOLS_DIR := $(BIN_DIR)/tools
DEV_DIR  := $(CURDIR)/.dev

# Workspace modules: their directories and their package patterns (module/...).
MODULE_DIRS = $(shell $(GO) list -m -f '{{.Dir}}')
MODULE_PKGS = $(shell $(GO) list -m -f '{{.Path}}/...')

# Knobs (override on the command line: make test TESTFLAGS='-run Raft -v').
TEST_TIMEOUT  ?= 20m
TESTFLAGS     ?=
BENCHTIME     ?= 200ms
BENCHFLAGS    ?=
CHAOS_TIMEOUT ?= 13m
# Full logs of the processes of failed real-process tests (pkg/harness) land here.
TEST_LOG_DIR  ?= $(CURDIR)/tmp/test-logs

# Environment of every test run: where the harness finds the built binaries.
TEST_ENV = PLASMA_BIN_DIR=$(BIN_DIR) PLASMA_TEST_LOG_DIR=$(TEST_LOG_DIR)

.PHONY: help build test dev cluster proto lint bench chaos deps tools image compose-smoke clean distclean

help: ## list targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sort | awk -F ':.*## ' '{ printf "  %-14s %s\n", $$1, $$2 }'

deps: ## install missing Debian packages the tests need (scripts/deps.sh)
	@scripts/deps.sh

tools: ## build buf, protoc-gen-go, protoc-gen-connect-go into bin/tools (slow once)
	@scripts/tools.sh

# Every main package under <module>/cmd/ becomes bin/<name>: static (CGO_ENABLED=0, so
# the binaries run in FROM-scratch images) and reproducible (-trimpath).
build: ## build every <module>/cmd/* into bin/
	@mkdir -p $(BIN_DIR)
	@for dir in $(MODULE_DIRS); do \
		[[ -d $$dir/cmd ]] || continue; \
		echo "go build $${dir#$(CURDIR)/}/cmd/... -> bin/"; \
		(cd $$dir && CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN_DIR)/ ./cmd/...); \
	done

# -count=1: many tests exec the built binaries, which go test's cache cannot see change.
test: deps build ## deps + build, then go test -race over every workspace module
	@rm -rf $(TEST_LOG_DIR) && mkdir -p $(TEST_LOG_DIR)
	@echo "go test -race -count=1 -timeout $(TEST_TIMEOUT) -skip '^TestChaos' $(TESTFLAGS) $(MODULE_PKGS)   (the chaos suite: make chaos)"
	@status=0; \
	$(TEST_ENV) $(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) -skip '^TestChaos' $(TESTFLAGS) $(MODULE_PKGS) 2>&1 \
		| tee $(TEST_LOG_DIR)/go-test.out || status=$$?; \
	if (( status != 0 )); then \
		echo; echo "==== make test: FAILED (exit $$status). Failures:"; \
		grep -E '^ *--- FAIL|^FAIL[[:space:]]|^panic:' $(TEST_LOG_DIR)/go-test.out | sed 's/^/    /' || true; \
		echo "     full output: $(TEST_LOG_DIR)/go-test.out; process logs of failed tests: $(TEST_LOG_DIR)/"; \
		exit $$status; \
	fi; \
	echo; echo "==== make test: PASS (packages ok: $$(grep -c '^ok ' $(TEST_LOG_DIR)/go-test.out))"

dev: test ## deps + build + test, then a 3-node ChainFire cluster on loopback (Ctrl-C stops it)
	@scripts/dev-cluster.sh

cluster: build ## the 3-node dev cluster alone, without running the tests first
	@scripts/dev-cluster.sh

proto: tools ## regenerate Go code from proto/ with buf, then buf lint
	cd proto && PATH=$(TOOLS_DIR):$$PATH buf generate
	cd proto && PATH=$(TOOLS_DIR):$$PATH buf lint

# gofmt covers hand-written code only: generated *.pb.go and *.connect.go are the
# generators' business.
lint: ## gofmt (excluding generated code), go vet on every module, bash -n (and shellcheck if installed) on scripts
	@unformatted=$$(find . \( -path ./bin -o -path ./.dev -o -path ./tmp -o -path ./.git \) -prune -o \
		-name '*.go' ! -name '*.pb.go' ! -name '*.connect.go' -print | xargs -r gofmt -l); \
	if [[ -n $$unformatted ]]; then echo "gofmt -l:"; echo "$$unformatted" | sed 's/^/    /'; exit 1; fi
	$(GO) vet $(MODULE_PKGS)
	@for f in scripts/*.sh .ci/run; do bash -n $$f; done
	@if command -v shellcheck >/dev/null; then shellcheck scripts/*.sh .ci/run; fi

bench: build ## go test -bench over every module (short -benchtime; set BENCHTIME=5s for real numbers)
	$(TEST_ENV) $(GO) test -run '^$$' -bench . -benchtime $(BENCHTIME) -benchmem -timeout 60m $(BENCHFLAGS) $(MODULE_PKGS)

chaos: deps build ## ChainFire's chaos suite: faults + checked histories (chainfire/chaos; needs root, ~8 min; gates CI)
	@mkdir -p $(TEST_LOG_DIR)
	cd chainfire && $(TEST_ENV) $(GO) test -race -count=1 -run Chaos -timeout $(CHAOS_TIMEOUT) $(TESTFLAGS) ./chaos/

image: build ## docker image plasmacloud/chainfire:dev from bin/chainfire (FROM scratch)
	@scripts/docker-image.sh

compose-smoke: build ## 3-node cluster from deploy/docker-compose.yml: put/get through etcdctl
	@scripts/compose-smoke.sh

clean: ## remove built binaries, dev cluster data and test logs (keeps bin/tools)
	@if [[ -d $(BIN_DIR) ]]; then find $(BIN_DIR) -mindepth 1 -maxdepth 1 ! -name tools -exec rm -rf {} +; fi
	rm -rf $(DEV_DIR) $(TEST_LOG_DIR)

distclean: clean ## clean, and remove bin/tools too
	rm -rf $(BIN_DIR)

.PHONY: bench-compare
bench-compare: build ## ChainFire vs etcd 3.4, 3 members each, interleaved rounds (ROUNDS, TOTAL, QUICK=1; docs/chainfire/performance.md)
	@scripts/bench-compare.sh
