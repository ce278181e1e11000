# vllm-qdq image: the pinned upstream vLLM 0.30.0 + vllm-omni 0.30.0 image, with patches/ applied to
# the installed sources and the vllm-qdq overlay installed (--no-deps). Build it with scripts/build.sh,
# which computes the label build args (patch series + overlay version) and prepares offline mode.
#
# Pin the base by digest for a reproducible build, e.g.
#   scripts/build.sh --base vllm/vllm-omni:v0.30.0@sha256:<digest>
# (`docker buildx imagetools inspect vllm/vllm-omni:v0.30.0` or `docker inspect -f '{{index .RepoDigests 0}}'`
# after a pull shows the digest). CI builds on the CPU stand-in made by scripts/build-cpu-base.sh.
ARG BASE_IMAGE=vllm/vllm-omni:v0.30.0
FROM ${BASE_IMAGE}

# online: pip installs the overlay from the copied source (build isolation fetches setuptools);
# offline: only from docker/wheelhouse (the overlay wheel put there by `scripts/build.sh --offline`),
# with --no-index, so the build reaches no package index at all.
ARG BUILD_MODE=online
# "name=sha256;..." of patches/series in order, or "none"; checked against the context at build time.
ARG QDQ_PATCH_SERIES=unset
ARG QDQ_OVERLAY_VERSION=unset
ARG BASE_IMAGE

LABEL org.opencontainers.image.title="vllm-qdq" \
      org.opencontainers.image.description="vLLM 0.30.0 + vllm-omni 0.30.0 with simulated low-precision numerics (QDQ, qdq method, sage3 attention)" \
      org.opencontainers.image.version="${QDQ_OVERLAY_VERSION}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}" \
      io.vllm-qdq.overlay.version="${QDQ_OVERLAY_VERSION}" \
      io.vllm-qdq.patches="${QDQ_PATCH_SERIES}" \
      io.vllm-qdq.build-mode="${BUILD_MODE}"

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# One COPY and one RUN: the context is a whitelist (.dockerignore), and under storage drivers that
# copy whole layers (vfs) every extra layer costs the size of the image.
COPY . /tmp/vllm-qdq/
RUN BUILD_MODE="${BUILD_MODE}" QDQ_PATCH_SERIES="${QDQ_PATCH_SERIES}" QDQ_OVERLAY_VERSION="${QDQ_OVERLAY_VERSION}" \
    bash /tmp/vllm-qdq/docker/install-overlay.sh

# vllm/vllm-omni's image sets `ENTRYPOINT []` (clearing vllm-openai's ["vllm", "serve"]); this wrapper
# serves `docker run IMAGE MODEL ...` like vllm-openai and runs `docker run IMAGE vllm serve ...`
# (or any other program) as given, like vllm-omni. vllm-omni's `vllm` command is the one on PATH.
ENTRYPOINT ["/usr/local/bin/vllm-qdq-entrypoint"]
CMD []
