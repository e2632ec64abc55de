#!/usr/bin/env bash
# Checks the deployment artefacts offline, with the tools their users run: hadolint on the
# Dockerfile, and its build stage compiled from the files it copies; helm lint and
# kubernetes-validate on the chart rendered with its default values and with every values
# file in charts/ortserve/ci; deploy/ against the chart; and the KServe resources against
# KServe's CRDs (copies in tests/data/reference/kserve-crds).
#   usage: scripts/check-deploy.sh VENV TOOLS
set -euo pipefail
venv=$1 tools=$2
helm=$tools/bin/helm
validate() { "$venv/bin/kubernetes-validate" --strict --quiet --no-warn "$@"; }

echo "== Dockerfile (hadolint)"
"$venv/bin/hadolint" --failure-threshold error Dockerfile

echo "== The image's build stage compiles from what the Dockerfile copies"
scripts/check-image-context.sh

echo "== CUDA image wheels (docker/cuda-requirements.txt)"
scripts/check-cuda-pins.sh "$venv"

echo "== Helm chart (helm lint --strict, kubernetes-validate --strict)"
for values in "" charts/ortserve/ci/*.yaml; do
  args=()
  [[ -n $values ]] && args=(-f "$values")
  echo "   values: ${values:-defaults}"
  "$helm" lint --strict --quiet charts/ortserve "${args[@]}" >/dev/null
  "$helm" template ortserve charts/ortserve "${args[@]}" | validate -
done
# The oldest Kubernetes the chart supports, with its defaults.
"$helm" template ortserve charts/ortserve | validate -k 1.29.0 -

# The Grafana dashboard's ConfigMap: absent by default, and when enabled it holds
# dashboards/ortserve.json unchanged (tests/suite/grafana_dashboard.rs checks the JSON).
if "$helm" template ortserve charts/ortserve | grep -q 'ortserve.json:'; then
  echo "the dashboard ConfigMap is rendered although grafanaDashboard.enabled is false" >&2
  exit 1
fi
"$helm" template ortserve charts/ortserve -f charts/ortserve/ci/grafana-dashboard-values.yaml \
    --show-only templates/grafana-dashboard.yaml |
  "$venv/bin/python" -c '
import json, sys, yaml
rendered = yaml.safe_load(sys.stdin)["data"]["ortserve.json"]
shipped = json.load(open("charts/ortserve/dashboards/ortserve.json"))
sys.exit(0 if json.loads(rendered) == shipped else "the dashboard ConfigMap does not hold dashboards/ortserve.json")'

"$venv/bin/python" scripts/check-rendered.py "$helm"

echo "== deploy/ (generated from the chart)"
rendered=$(mktemp)
trap 'rm -f "$rendered"' EXIT
scripts/render-deploy.sh "$helm" > "$rendered"
if ! diff -u deploy/ortserve.yaml "$rendered"; then
  echo "deploy/ortserve.yaml is out of date with the chart: run 'make deploy'" >&2
  exit 1
fi
validate deploy/*.yaml

echo "== KServe resources (kubernetes/) against KServe's CRDs"
validate kubernetes/*.yaml
# Verbatim copies kept in the repository (see their README.md), checked against
# their recorded sums: a missing or altered file fails the check, never skips it.
crds=tests/data/reference/kserve-crds
if ! (cd "$crds" && sha256sum --check --strict --quiet SHA256SUMS); then
  echo "KServe's CRDs in $crds are missing or altered: restore them (see $crds/README.md)" >&2
  exit 1
fi
report=$("$venv/bin/python" "$crds/validate_cr.py" --strict \
  --crd "$crds/serving.kserve.io_inferenceservices.yaml" \
  --crd "$crds/serving.kserve.io_clusterservingruntimes.yaml" \
  --crd "$crds/serving.kserve.io_servingruntimes.yaml" \
  kubernetes/*.yaml) || { echo "$report"; exit 1; }
echo "$report" | sed 's/^/   /'
# Every KServe resource was matched to a CRD and checked (none skipped).
if grep -q '^SKIP .*serving\.kserve\.io' <<<"$report" || ! grep -q '^PASS ' <<<"$report"; then
  echo "some KServe resource was not checked against a CRD" >&2
  exit 1
fi
echo "deployment checks passed"
