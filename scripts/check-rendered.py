"""Renders the Helm chart and reads the KServe runtime, and asserts on the objects: the
behaviours a first real install depends on, each of which broke one before (see
docs/kubernetes.md).

    usage: check-rendered.py HELM
"""

import subprocess
import sys

import yaml

HELM = sys.argv[1]
CHART = "charts/ortserve"
failures = []


def render(*args, kube=None):
    command = [HELM, "template", "ortserve", CHART, *args]
    if kube:
        command += ["--kube-version", kube]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip())
    return [o for o in yaml.safe_load_all(done.stdout) if o]


def values(*files, **sets):
    args = []
    for f in files:
        args += ["-f", f"{CHART}/ci/{f}"]
    for key, value in sets.items():
        args += ["--set-json" if isinstance(value, (dict, list)) else "--set", f"{key.replace('__', '.')}={value}"]
    return args


def check(what, condition, detail=""):
    print(("   ok   " if condition else "   FAIL ") + what)
    if not condition:
        failures.append(f"{what}: {detail}")


def find(objects, kind, name=None):
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def deployment(objects):
    return find(objects, "Deployment")[0]


def container(objects):
    return deployment(objects)["spec"]["template"]["spec"]["containers"][0]


def declared_models(objects):
    maps = [m for m in find(objects, "ConfigMap") if "ortserve.io/models" in m["metadata"]["labels"]]
    return sorted(name for m in maps for name in m.get("data", {}))


print("== chart and runtime behaviours (scripts/check-rendered.py)")

# 1. The demo model appears only in the demo mode.
expected = {
    "": ["digits.yaml"],
    "gpu-values.yaml": ["digits.yaml"],
    "hpa-metrics-values.yaml": ["digits.yaml"],
    "hpa-custom-metrics-values.yaml": ["digits.yaml"],
    "pvc-values.yaml": ["bert.yaml", "resnet.yaml"],
    "production-values.yaml": ["classifier.yaml"],
    "emptydir-init-values.yaml": [],
}
for file, models in expected.items():
    got = declared_models(render(*values(file) if file else []))
    check(f"declared models with {file or 'the defaults'}: {models}", got == models, got)
own_image_store = render("--set", "models.declarations.mine\\.yaml=source: mine.mar")
check("the user's declarations on the image store replace the demo", declared_models(own_image_store) == ["mine.yaml"])

# 2. Sized by the pod's CPU request.
env = {e["name"]: e for e in container(render())["env"]}
cpus = env.get("ORTSERVE_CPUS", {}).get("valueFrom", {}).get("resourceFieldRef", {})
check("ORTSERVE_CPUS comes from the container's requests.cpu in whole cores",
      cpus == {"containerName": "ortserve", "resource": "requests.cpu", "divisor": "1"}, cpus)

# 3. Liveness means "the process works"; readiness and startup stay on /ping.
probes = container(render())
check("liveness defaults to /v2/health/live", probes["livenessProbe"]["httpGet"]["path"] == "/v2/health/live")
check("readiness and startup use /ping",
      probes["readinessProbe"]["httpGet"]["path"] == "/ping" and probes["startupProbe"]["httpGet"]["path"] == "/ping")

# 4. Server settings roll the pods; model declarations do not.
def pod_template(*args):
    return deployment(render(*args))["spec"]["template"]

base = pod_template()
changed_settings = pod_template("--set", "serverProperties.job_queue_size=500")
changed_models = pod_template("--set", "models.declarations.digits\\.yaml=source: digits.mar")
check("a serverProperties change changes the pod template (checksum/config)",
      base["metadata"]["annotations"]["checksum/config"] != changed_settings["metadata"]["annotations"]["checksum/config"])
check("a declaration change leaves the pod template as it was", base == changed_models)

# 5. One source per ConfigMap: with the API watch, the declarations are not also mounted.
watched = render(*values("pvc-values.yaml"))
args = container(watched)["args"]
mounts = [m["mountPath"] for m in container(watched)["volumeMounts"]]
check("with watchApi, no --model-config-dir and no mounted declarations",
      not any(a.startswith("--model-config-dir") for a in args) and "/etc/ortserve/models" not in mounts, args)
check("with watchApi, the API selector is passed", any(a.startswith("--configmap-selector=") for a in args))
rules = find(watched, "Role")[0]["rules"]
check("the Role holds only the verbs the server uses",
      rules == [{"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
                {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list", "watch"]}], rules)

# 8. Scheduling, escape hatches, safe defaults.
pdb = find(render("--set", "podDisruptionBudget.enabled=true"), "PodDisruptionBudget")[0]["spec"]
check("the PDB defaults to maxUnavailable 1", pdb.get("maxUnavailable") == 1 and "minAvailable" not in pdb, pdb)
prod = render(*values("production-values.yaml"))
spec = deployment(prod)["spec"]["template"]["spec"]
check("production values: spread, runtime class, priority class, sidecar, extra volume and mount",
      spec.get("topologySpreadConstraints") and spec.get("runtimeClassName") == "gvisor"
      and spec.get("priorityClassName") == "high-priority"
      and [c["name"] for c in spec["containers"]] == ["ortserve", "log-shipper"]
      and any(v["name"] == "scratch" for v in spec["volumes"])
      and any(m["mountPath"] == "/scratch" for m in spec["containers"][0]["volumeMounts"]))
check("no service account token without API use", spec["automountServiceAccountToken"] is False)
check("no Role without API use", not find(prod, "Role"))
check("a NetworkPolicy when asked", len(find(prod, "NetworkPolicy")) == 1)
services = {s["metadata"]["name"]: s["spec"] for s in find(prod, "Service")}
check("a LoadBalancer inference Service never publishes metrics",
      services["ortserve"]["type"] == "LoadBalancer"
      and all(p["name"] != "metrics" for p in services["ortserve"]["ports"])
      and services["ortserve-metrics"]["type"] == "ClusterIP", services)
check("the service account token is mounted for Events by default",
      deployment(render())["spec"]["template"]["spec"]["automountServiceAccountToken"] is True)
try:
    render("--set", "drain.preStopSleepSeconds=5", kube="1.29.0")
    check("a preStop sleep on Kubernetes 1.29 is refused", False, "rendered")
except RuntimeError as refused:
    check("a preStop sleep on Kubernetes 1.29 is refused", "needs Kubernetes 1.30" in str(refused), refused)
slow = deployment(render("--set", "probes.startupTimeoutSeconds=1800"))["spec"]
check("the progress deadline covers the startup budget", slow["progressDeadlineSeconds"] >= 1800 + 30, slow["progressDeadlineSeconds"])

# 9. Autoscaling on the server's own signals.
hpa = find(render(*values("hpa-custom-metrics-values.yaml")), "HorizontalPodAutoscaler")[0]["spec"]
names = [m.get("pods", {}).get("metric", {}).get("name") for m in hpa["metrics"]]
check("the HPA scales on requests in flight and queued rows, not CPU",
      names == ["ortserve_requests_in_flight", "ortserve_queue_rows"], hpa["metrics"])
check("the HPA has a behavior section", "scaleDown" in hpa.get("behavior", {}))
default_hpa = find(render("--set", "autoscaling.enabled=true"), "HorizontalPodAutoscaler")[0]["spec"]
check("CPU stays the default signal", [m["type"] for m in default_hpa["metrics"]] == ["Resource"])

# 10. gRPC reachable through the Service: bound on every interface, the container port
# named h2c (KServe's name for it), the Service port marked as HTTP/2 for meshes; off, the
# listener stays on the pod's loopback and nothing publishes it.
def grpc_parts(*args):
    objects = render(*args)
    env = {e["name"]: e.get("value") for e in container(objects)["env"]}
    ports = {p["name"]: p for p in container(objects)["ports"]}
    service = [p for p in find(objects, "Service", "ortserve")[0]["spec"]["ports"] if p["name"] == "grpc"]
    return env.get("ORTSERVE_GRPC_ADDRESS"), ports.get("h2c"), service

address, port, service = grpc_parts()
check("gRPC binds 0.0.0.0:7070 in the pod", address == "http://0.0.0.0:7070", address)
check("the container declares gRPC's port as h2c", port == {"name": "h2c", "containerPort": 7070, "protocol": "TCP"}, port)
check("the Service's grpc port targets h2c with appProtocol grpc",
      service == [{"name": "grpc", "port": 7070, "targetPort": "h2c", "protocol": "TCP", "appProtocol": "grpc"}], service)
address, port, service = grpc_parts("--set", "service.grpc.enabled=false", "--set", "service.grpc.port=9000")
check("gRPC disabled: loopback only, no container or Service port",
      address == "http://127.0.0.1:9000" and port is None and not service, (address, port, service))
policy = find(render(*values("production-values.yaml")), "NetworkPolicy")[0]["spec"]["ingress"][0]["ports"]
check("the NetworkPolicy admits gRPC beside HTTP", {"port": "h2c", "protocol": "TCP"} in policy, policy)

# 6. A KServe runtime that takes no InferenceService it was not asked for.
examples = ["isvc-v1.yaml", "isvc-v2.yaml", "isvc-config.yaml", "isvc-gpu.yaml", "isvc-grpc.yaml"]
kserve = [o for f in ["ortserve-runtime.yaml", *examples]
          for o in yaml.safe_load_all(open(f"kubernetes/{f}")) if o]
for runtime in [o for o in kserve if o["kind"] == "ClusterServingRuntime"]:
    name = runtime["metadata"]["name"]
    formats = runtime["spec"]["supportedModelFormats"]
    check(f"{name} is never auto-selected", all(f.get("autoSelect") is False and "priority" not in f for f in formats), formats)
    args = runtime["spec"]["containers"][0]["args"]
    check(f"{name} pins the metrics address its scrape annotations name",
          "--metrics-address=http://0.0.0.0:8082" in args
          and runtime["spec"]["annotations"]["prometheus.kserve.io/port"] == "8082", args)
    env = {e["name"]: e for e in runtime["spec"]["containers"][0].get("env", [])}
    check(f"{name} sizes ortserve by its CPU request", "resourceFieldRef" in env.get("ORTSERVE_CPUS", {}).get("valueFrom", {}))
for isvc in [o for o in kserve if o["kind"] == "InferenceService"]:
    model = isvc["spec"]["predictor"]["model"]
    check(f"example {isvc['metadata']['name']} names its runtime", model.get("runtime", "").startswith("kserve-ortserve"), model)
# grpc-v2: Knative allows one port per container and KServe merges the InferenceService's
# ports into the runtime's, so the runtime declares none and the example's one port, named
# h2c, is the runtime's --grpc_port.
runtimes = {o["metadata"]["name"]: o["spec"]["containers"][0] for o in kserve if o["kind"] == "ClusterServingRuntime"}
for name, runtime in runtimes.items():
    check(f"{name} declares no container ports (an InferenceService's own are the only ones)", "ports" not in runtime, runtime.get("ports"))
for isvc in [o for o in kserve if o["kind"] == "InferenceService" and o["spec"]["predictor"]["model"].get("protocolVersion") == "grpc-v2"]:
    model = isvc["spec"]["predictor"]["model"]
    grpc_port = [a.split("=", 1)[1] for a in runtimes[model["runtime"]]["args"] if a.startswith("--grpc_port=")]
    check(f"example {isvc['metadata']['name']} routes to the runtime's gRPC port as h2c",
          model.get("ports") == [{"containerPort": int(grpc_port[0]), "name": "h2c", "protocol": "TCP"}] if grpc_port else False,
          (model.get("ports"), grpc_port))

if failures:
    print("chart checks failed:\n  " + "\n  ".join(map(str, failures)), file=sys.stderr)
    sys.exit(1)
print("chart checks passed")
