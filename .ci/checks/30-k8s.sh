#!/usr/bin/env bash
# Renders every kustomize overlay under k8s/overlays and validates the result offline
# against the Kubernetes schemas of a pinned version; lints the Dockerfile.
#
# CRDs: the ServiceMonitor (monitoring.coreos.com/v1) is not in the Kubernetes schemas
# and its CRD schema is not shipped with the project, so it is skipped here by name, on
# purpose. Its fields are checked instead by `cargo test` (gateway/tests/deploy.rs: it
# selects the admin Service and scrapes the port and path that really serve /metrics).
# Any other resource kind the validator does not know fails the check.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$HOME/.local/bin:$PATH"
# The Kubernetes version the manifests must be valid for.
KUBERNETES_VERSION=1.32.0

for tool in kubectl kubernetes-validate hadolint; do
  command -v "$tool" >/dev/null || { echo "30-k8s: $tool is missing" >&2; exit 1; }
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

overlays=(k8s/overlays/*/)
[ -e "${overlays[0]}" ] || { echo "30-k8s: no overlay under k8s/overlays" >&2; exit 1; }
for overlay in "${overlays[@]}"; do
  name="$(basename "$overlay")"
  kubectl kustomize "$overlay" > "$work/$name.yaml"
  # One file per document, so that the CRD instances can be set aside by kind.
  python3 - "$work/$name.yaml" "$work/$name" <<'PY'
import os, sys
src, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
docs = [d for d in open(src).read().split("\n---\n") if d.strip()]
for i, doc in enumerate(docs):
    kind = next((l.split(":", 1)[1].strip() for l in doc.splitlines() if l.startswith("kind:")), "")
    sub = "crd" if kind in ("ServiceMonitor",) else "core"
    os.makedirs(os.path.join(out, sub), exist_ok=True)
    open(os.path.join(out, sub, f"{i:02d}-{kind}.yaml"), "w").write(doc + "\n")
print(f"{len(docs)} resources")
PY
  echo "30-k8s: $name: validating against Kubernetes $KUBERNETES_VERSION (strict)"
  kubernetes-validate --strict --kubernetes-version "$KUBERNETES_VERSION" --quiet "$work/$name"/core/*.yaml
  for skipped in "$work/$name"/crd/*.yaml; do
    [ -e "$skipped" ] || continue
    echo "30-k8s: $name: skipped (CRD, no schema offline; checked by gateway/tests/deploy.rs): $(basename "$skipped")"
  done
done

echo "30-k8s: hadolint Dockerfile"
hadolint Dockerfile
echo "30-k8s: ok"
