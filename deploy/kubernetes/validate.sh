#!/usr/bin/env bash
# Offline check of the Kubernetes manifests in this directory; .ci/run runs it (a few seconds).
#
#  1. Every object of every *.yaml here except kustomization.yaml (not a Kubernetes object) is
#     validated against the Kubernetes JSON schemas that kubernetes-validate (PyPI) bundles:
#     nothing is downloaded while checking. Strict: a field the schema does not know is an
#     error. Against the oldest and the newest Kubernetes version supported here. An object
#     whose kind or apiVersion has no schema is an error as well (the tool itself only warns).
#  2. kustomization.yaml: every resource and ConfigMap source file it names exists, and every
#     manifest here is one of its resources (none forgotten).
#  3. The rules of this deployment: every container runs as non-root with a read-only root
#     file system, no privilege escalation and all capabilities dropped, has a memory limit and
#     readiness and liveness probes; no Service exposes the admin port (9080) outside the
#     cluster (NodePort, LoadBalancer, externalIPs).
#  4. Where kubectl is installed (not needed): the kustomization's output (namespace, images,
#     generated ConfigMaps) is validated as in 1.
#
# Usage: deploy/kubernetes/validate.sh [DIR]   (default: this directory; DIR: a copy, e.g. to see
# a broken manifest fail). Exit status 0 when everything passes, 1 otherwise.
set -euo pipefail
dir=${1:-$(dirname "$0")}
tool_version=1.37.0
k8s_versions=(1.28.0 1.37.0)

installed=$(python3 -c 'import kubernetes_validate.version as v; print(v.__version__)' 2>/dev/null || true)
if [ "$installed" != "$tool_version" ]; then
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "kubernetes-validate==$tool_version"
fi

manifests=()
for f in "$dir"/*.yaml; do
    [ "$(basename "$f")" = kustomization.yaml ] || manifests+=("$f")
done
[ ${#manifests[@]} -gt 0 ] || { echo "no manifests in $dir"; exit 1; }

failed=0
# Runs kubernetes-validate on its arguments for every version: prints the problems (WARN, ERROR,
# FATAL lines, including "no schema for this kind") and counts the objects that passed.
schema_check() {
    local args=() out rc passed
    for v in "${k8s_versions[@]}"; do args+=(-k "$v"); done
    rc=0
    out=$(python3 -m kubernetes_validate --strict "${args[@]}" "$@" 2>&1) || rc=$?
    passed=$(grep -c '^INFO .* passed for resource' <<<"$out" || true)
    if [ "$rc" -ne 0 ] || grep -qv '^INFO ' <<<"$out"; then
        grep -v '^INFO ' <<<"$out" || true
        failed=1
    fi
    echo "$passed object validations passed"
}

echo "-- schemas (Kubernetes ${k8s_versions[*]}, strict): ${manifests[*]}"
schema_check "${manifests[@]}"

echo "-- kustomization and deployment rules"
python3 - "$dir" <<'EOF' || failed=1
import glob, os, sys
import yaml

d = sys.argv[1]
problems = []
kfile = os.path.join(d, "kustomization.yaml")
manifests = sorted(
    os.path.basename(p) for p in glob.glob(os.path.join(d, "*.yaml")) if p != kfile
)
if os.path.exists(kfile):
    with open(kfile) as f:
        k = yaml.safe_load(f) or {}
    resources = k.get("resources") or []
    for r in resources:
        if not os.path.exists(os.path.join(d, r)):
            problems.append(f"kustomization.yaml: resource {r} does not exist")
    for m in manifests:
        if m not in resources:
            problems.append(f"kustomization.yaml: {m} is not among its resources")
    for gen in k.get("configMapGenerator") or []:
        for src in gen.get("files") or []:
            path = src.split("=", 1)[-1]
            if not os.path.isfile(os.path.join(d, path)):
                problems.append(
                    f"kustomization.yaml: configMap {gen.get('name')}: {path} does not exist"
                )

def templates(obj):
    kind = obj.get("kind")
    spec = obj.get("spec") or {}
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        yield (spec.get("template") or {}).get("spec") or {}
    elif kind == "CronJob":
        yield (((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}).get("spec") or {}
    elif kind == "Pod":
        yield spec

objects = 0
for m in manifests:
    with open(os.path.join(d, m)) as f:
        try:
            docs = [x for x in yaml.safe_load_all(f) if x]
        except yaml.YAMLError as e:
            problems.append(f"{m}: not YAML: {e}")
            continue
    for obj in docs:
        objects += 1
        name = f"{m}: {obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"
        for pod in templates(obj):
            psc = pod.get("securityContext") or {}
            for c in (pod.get("initContainers") or []) + (pod.get("containers") or []):
                where = f"{name}: container {c.get('name')}"
                sc = c.get("securityContext") or {}
                if not (sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True):
                    problems.append(f"{where}: runAsNonRoot is not true")
                if sc.get("readOnlyRootFilesystem") is not True:
                    problems.append(f"{where}: readOnlyRootFilesystem is not true")
                if sc.get("allowPrivilegeEscalation") is not False:
                    problems.append(f"{where}: allowPrivilegeEscalation is not false")
                if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
                    problems.append(f"{where}: capabilities.drop lacks ALL")
                if not ((c.get("resources") or {}).get("limits") or {}).get("memory"):
                    problems.append(f"{where}: no memory limit")
            for c in pod.get("containers") or []:
                for probe in ("readinessProbe", "livenessProbe"):
                    if probe not in c:
                        problems.append(f"{name}: container {c.get('name')}: no {probe}")
        if obj.get("kind") == "Service":
            spec = obj.get("spec") or {}
            outside = spec.get("type") in ("NodePort", "LoadBalancer") or spec.get("externalIPs")
            for p in spec.get("ports") or []:
                if outside and 9080 in (p.get("port"), p.get("targetPort"), p.get("nodePort")) \
                        or outside and p.get("targetPort") == "admin":
                    problems.append(f"{name}: exposes the admin port outside the cluster")

for p in problems:
    print("ERROR " + p)
print(f"{objects} objects in {len(manifests)} files checked, {len(problems)} problem(s)")
sys.exit(1 if problems else 0)
EOF

if command -v kubectl >/dev/null 2>&1; then
    echo "-- kubectl kustomize output"
    rendered=$(mktemp --suffix=.yaml)
    if kubectl kustomize --load-restrictor LoadRestrictionsNone "$dir" >"$rendered" 2>&1; then
        schema_check "$rendered"
    else
        echo "ERROR kubectl kustomize: $(cat "$rendered")"
        failed=1
    fi
    rm -f "$rendered"
else
    echo "-- kubectl not installed: the kustomization's output is not rendered"
fi

if [ "$failed" -ne 0 ]; then
    echo "Kubernetes manifests: FAILED"
    exit 1
fi
echo "Kubernetes manifests: valid"
