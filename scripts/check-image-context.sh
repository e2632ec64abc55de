#!/usr/bin/env bash
# Checks that the Dockerfile's build stage has everything the crate needs to compile: it
# assembles the build context as .dockerignore lets it through (everything ignored, then
# the `!path` lines kept), copies what the `AS build` stage's COPY lines copy, and runs
# `cargo check --locked --offline --bin ortserve` there. No container engine is needed.
# The copy lives at a fixed path under target/, so its dependencies' check artefacts are
# the checkout's own (shared with clippy's) and repeated runs do not pile up new ones.
#   usage: scripts/check-image-context.sh
set -euo pipefail
checkout=$PWD
work=$checkout/target/image-context
rm -rf "$work"
mkdir -p "$work/context" "$work/src"

sed -n 's/^!//p' .dockerignore | while read -r kept; do
  if [[ -e $kept ]]; then cp -r --parents "$kept" "$work/context"; fi
done

# The build stage's COPY lines: `COPY SOURCE... DESTINATION`, relative to WORKDIR /src.
awk '/^FROM .* AS build$/ { stage = 1; next } /^FROM / { stage = 0 }
     stage && /^COPY / { $1 = ""; print }' Dockerfile |
  while read -r -a words; do
    destination=$work/src/${words[-1]}
    unset 'words[-1]'
    for source in "${words[@]}"; do
      if [[ ! -e $work/context/$source ]]; then
        echo "the Dockerfile copies $source, which .dockerignore leaves out of the build context" >&2
        exit 1
      fi
      cp -r "$work/context/$source" "$destination"
    done
  done

if ! (cd "$work/src" && CARGO_TARGET_DIR="$checkout/target" cargo check --locked --offline --quiet --bin ortserve 2>&1 | tail -40
      exit "${PIPESTATUS[0]}"); then
  echo "the Dockerfile's build stage cannot compile ortserve from what it copies:" \
    "add the missing files to its COPY lines and to .dockerignore" >&2
  exit 1
fi
