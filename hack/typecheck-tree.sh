#!/usr/bin/env bash
# Builds .typecheck/apx/, a tree of symlinks mirroring the installed package
# layout (apx.controllers -> controllers/, ...), for mypy. Called by `make typecheck`.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .typecheck/apx
for folder in controllers operator dataplane contracts runtime e2e; do
    if [ -d "$folder" ]; then
        ln -sfn "../../$folder" ".typecheck/apx/$folder"
    fi
done
