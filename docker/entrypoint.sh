#!/usr/bin/env bash
# ENTRYPOINT of the vllm-qdq image: `vllm serve` unless the first argument is a program.
#   docker run IMAGE MODEL [ARGS...]        -> vllm serve MODEL [ARGS...]   (vllm/vllm-openai's form)
#   docker run IMAGE --model MODEL ...      -> vllm serve --model MODEL ...
#   docker run IMAGE                        -> vllm serve                   (vLLM's default model)
#   docker run IMAGE vllm serve MODEL ...   -> run as given                 (vllm/vllm-omni's form, whose
#   docker run IMAGE bash | python3 ...     -> run as given                  Dockerfile sets ENTRYPOINT [])
# "A program" = the first argument resolves to an executable file (PATH lookup or a path); a model
# directory or a hub id never does.
set -e
if [ "$#" -gt 0 ] && [ "${1#-}" = "$1" ] && type -P -- "$1" >/dev/null 2>&1; then
  exec "$@"
fi
exec vllm serve "$@"
