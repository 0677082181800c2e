#!/usr/bin/env bash
# Regenerates the Go code beside every .proto under api/ with the pinned
# generators installed by `make tools` into ./bin.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/bin:$PATH"
for f in $(find api -name '*.proto' | sort); do
  protoc -I api \
    --go_out=api --go_opt=paths=source_relative \
    --go-grpc_out=api --go-grpc_opt=paths=source_relative \
    "$f"
done
