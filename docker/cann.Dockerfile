# syntax=docker/dockerfile:1.7
# CANN toolkit image that compiles edge-llm bundles for the Ascend 310B (Orange Pi AIpro 20T/8T):
# toolkit + 310B kernels (ops) package + the MatMulInteger ONNX parser plugin; runs ATC.
#
# The official ascendai/cann images (tags <cann>-<chip>-<os>-<py>) ship 910B/310P kernels,
# none for 310B, so the 310B kernels package is installed here. Download it for the same
# CANN version and this host's architecture from https://www.hiascend.com/cann (login
# needed) into docker/, then, from the repository root:
#   docker build -f docker/cann.Dockerfile -t edge-llm/cann:8.0.0-310b \
#       --build-arg KERNELS_RUN=Ascend-cann-kernels-310b_8.0.0_linux-x86_64.run docker/
# (`make docker-build` does this.) Used by `python -m host compile --runner docker`.
ARG CANN_BASE=ascendai/cann:8.0.0-910b-ubuntu22.04-py3.10
FROM ${CANN_BASE}

ARG KERNELS_RUN=Ascend-cann-kernels-310b_8.0.0_linux-x86_64.run
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Plugin build tools. Versions follow the base image's Ubuntu release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake g++ make \
    && rm -rf /var/lib/apt/lists/*

# The 310B kernels: bind-mounted from the build context, so the .run never becomes a layer.
RUN --mount=type=bind,source=${KERNELS_RUN},target=/tmp/kernels.run \
    bash /tmp/kernels.run --install --quiet \
    && { ls -d /usr/local/Ascend/ascend-toolkit/latest/opp/built-in/op_impl/ai_core/tbe/kernel/ascend310b* \
         || echo "warning: no ascend310b kernel directory after installing ${KERNELS_RUN}; is it the 310B package?"; }

COPY plugin/ /opt/edge-llm/plugin/
RUN source /usr/local/Ascend/ascend-toolkit/set_env.sh \
    && /opt/edge-llm/plugin/build.sh \
    && grep -q MatMulInteger "${ASCEND_OPP_PATH:-/usr/local/Ascend/ascend-toolkit/latest/opp}/vendors/edge_llm/framework/onnx/libcust_onnx_parsers.so"

COPY --chmod=755 cann-entrypoint.sh /usr/local/bin/cann-entrypoint
# The compile runs as the caller's uid (files in the bundle stay theirs): ATC's logs and
# kernel cache go under $HOME, so give every uid a writable one.
ENV HOME=/tmp
WORKDIR /out
ENTRYPOINT ["/usr/local/bin/cann-entrypoint"]
CMD ["atc", "--help"]
