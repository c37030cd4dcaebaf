#!/usr/bin/env bash
# Installs cargo-fuzz, the driver of the coverage-guided fuzz targets under fuzz/ that
# .ci/checks/40-fuzz.sh runs. Pinned; built from source with its own lock file
# (--locked) into $HOME/.cargo/bin. The targets need the nightly toolchain (libFuzzer's
# sanitizer flags are nightly-only): it is installed with rustup, and this step fails if
# it is absent rather than letting the check skip.
#
# Safe to run twice: nothing is rebuilt when the pinned version is already installed.
set -euo pipefail

CARGO_FUZZ_VERSION="0.13.2"
export PATH="$HOME/.cargo/bin:$PATH"

if ! command -v rustup >/dev/null 2>&1; then
  echo "40-cargo-fuzz: rustup not found; the fuzz targets need the nightly toolchain" >&2
  exit 1
fi
if ! rustup toolchain list | grep -q '^nightly'; then
  echo "40-cargo-fuzz: no nightly toolchain (rustup toolchain list):" >&2
  rustup toolchain list >&2
  exit 1
fi
cargo +nightly --version

installed="$(cargo fuzz --version 2>/dev/null || true)"
if [ "$installed" = "cargo-fuzz ${CARGO_FUZZ_VERSION}" ]; then
  echo "40-cargo-fuzz: cargo-fuzz ${CARGO_FUZZ_VERSION} already installed"
else
  echo "40-cargo-fuzz: installing cargo-fuzz ${CARGO_FUZZ_VERSION} (found: ${installed:-none})"
  cargo install cargo-fuzz --version "=${CARGO_FUZZ_VERSION}" --locked --force
fi
cargo fuzz --version
