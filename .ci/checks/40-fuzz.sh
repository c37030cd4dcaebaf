#!/usr/bin/env bash
# A short run of every coverage-guided fuzz target under fuzz/ (fuzz/README.md says what
# each one feeds and asserts). Fails on any crash: a panic or a failed assertion, a hang
# (an input taking over -timeout seconds), or an allocation or resident size over the
# memory bound. The crashing input is printed (hex) so that it can be replayed locally.
#
# Each target starts from a copy of its corpus (fuzz/corpus/<target>) in a temporary
# directory: what the run discovers, and any crash artifact, never lands in the tree.
# FUZZ_SECONDS lengthens the runs locally (default 15 s per target: with the build, the
# check stays near 4 minutes on 2 cores).
#
# The instrumented build goes to a target directory outside the clone, kept between runs
# (FUZZ_TARGET_DIR; by default under $HOME/.cache): CI runs in a fresh clone, and a cold
# build of the gateway's dependencies with sanitizer instrumentation takes about 7 minutes
# on 2 cores; later runs rebuild only the project's own crates (about 2 minutes, since
# each CI clone is a new path).
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$HOME/.cargo/bin:$PATH"

FUZZ_SECONDS="${FUZZ_SECONDS:-15}"
TARGET_DIR="${FUZZ_TARGET_DIR:-$HOME/.cache/payment-hub-fuzz/target}"
# Inputs are requests, responses and records of a few KB at most in the corpus.
MAX_LEN=8192
RSS_LIMIT_MB=2048

command -v cargo-fuzz >/dev/null || { echo "40-fuzz: cargo-fuzz is missing (.ci/setup/40-cargo-fuzz.sh)" >&2; exit 1; }
rustup toolchain list | grep -q '^nightly' || { echo "40-fuzz: no nightly toolchain" >&2; exit 1; }

# cargo fuzz has no --locked: check first that fuzz/Cargo.lock needs no change.
cargo +nightly metadata --locked --format-version 1 --manifest-path fuzz/Cargo.toml >/dev/null

mapfile -t targets < <(cargo +nightly fuzz list)
[ "${#targets[@]}" -gt 0 ] || { echo "40-fuzz: cargo fuzz list found no target" >&2; exit 1; }

echo "40-fuzz: building ${#targets[@]} targets (release, debug assertions, address sanitizer)"
started=$SECONDS
cargo +nightly fuzz build --release --debug-assertions --target-dir "$TARGET_DIR"
echo "40-fuzz: built in $((SECONDS - started)) s"
host="$(rustc +nightly -vV | sed -n 's/^host: //p')"
bin_dir="$TARGET_DIR/$host/release"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

for target in "${targets[@]}"; do
  corpus="fuzz/corpus/$target"
  if ! compgen -G "$corpus/*" >/dev/null; then
    echo "40-fuzz: $target has no seed corpus in $corpus" >&2
    exit 1
  fi
  mkdir -p "$work/corpus/$target" "$work/artifacts/$target"
  cp "$corpus"/* "$work/corpus/$target/"
  log="$work/$target.log"
  echo "40-fuzz: $target for ${FUZZ_SECONDS} s"
  if ! "$bin_dir/$target" \
      -max_total_time="$FUZZ_SECONDS" \
      -timeout=5 \
      -rss_limit_mb="$RSS_LIMIT_MB" \
      -malloc_limit_mb="$RSS_LIMIT_MB" \
      -max_len="$MAX_LEN" \
      -print_final_stats=1 \
      -artifact_prefix="$work/artifacts/$target/" \
      "$work/corpus/$target" >"$log" 2>&1; then
    echo "40-fuzz: $target FAILED; the end of its log:" >&2
    tail -n 60 "$log" >&2
    for artifact in "$work/artifacts/$target"/*; do
      [ -e "$artifact" ] || continue
      echo "40-fuzz: input $(basename "$artifact") (replay: write these bytes to a file and run" \
        "cargo +nightly fuzz run $target FILE):" >&2
      od -An -tx1 -v "$artifact" | head -n 200 >&2
    done
    exit 1
  fi
  runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
  echo "40-fuzz: $target ok: ${runs:-?} inputs, $(find "$work/corpus/$target" -type f | wc -l) in its corpus now"
done
echo "40-fuzz: ok"
