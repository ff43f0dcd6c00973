#!/usr/bin/env bash
# Build (and with --push, push) the CPU and CUDA images, tagged with the names in
# infra/images.yaml. Run from anywhere; the build context is the repository root.
#   bash infra/build_images.sh [cpu|cuda|all] [--push]
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
WHICH=${1:-all}
PUSH=${2:-}
image() {  # the value of key $1 in images.yaml (plain "key: value" lines)
  sed -n "s/^$1: *\([^ #]*\).*/\1/p" "$REPO/infra/images.yaml"
}

build() {
  local variant=$1 tag
  tag=$(image "$variant")
  [[ -n "$tag" ]] || { echo "error: no '$variant:' image in infra/images.yaml" >&2; exit 1; }
  echo "building $tag from infra/Dockerfile.$variant"
  DOCKER_BUILDKIT=1 docker build -f "$REPO/infra/Dockerfile.$variant" -t "$tag" "$REPO"
  if [[ "$PUSH" == "--push" ]]; then docker push "$tag"; fi
}

case "$WHICH" in
  cpu|cuda) build "$WHICH" ;;
  all) build cpu; build cuda ;;
  *) echo "usage: $0 [cpu|cuda|all] [--push]" >&2; exit 2 ;;
esac
