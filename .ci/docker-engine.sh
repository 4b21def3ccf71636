#!/usr/bin/env bash
# Start a Docker engine and make the offline base image the Docker tests use.
# Idempotent: an engine that answers and an image that exists are kept.
# See ENVIRONMENT.md: no bridge network and no registry here, so the engine runs with
# --iptables=false --bridge=none and the base image is made from Debian's packages.
set -uo pipefail
IMAGE="${MLTRAIN_TEST_BASE_IMAGE:-mltrain-base:bookworm}"

if ! docker info >/dev/null 2>&1; then
  if ! command -v dockerd >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
  fi
  nohup dockerd --iptables=false --bridge=none >/tmp/mltrain-dockerd.log 2>&1 &
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
fi
docker info >/dev/null 2>&1 || { echo "docker-engine: the engine did not start" >&2; exit 1; }

if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
  if ! command -v debootstrap >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  fi
  root=$(mktemp -d)
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip bookworm "$root" \
    http://deb.debian.org/debian >/tmp/mltrain-debootstrap.log 2>&1 \
    || { echo "docker-engine: debootstrap failed (see /tmp/mltrain-debootstrap.log)" >&2; exit 1; }
  tar -C "$root" -c . | docker import - "$IMAGE" >/dev/null
  rm -rf "$root"
fi
echo "docker-engine: ready, base image $IMAGE"
