"""deploy/: what a user runs on GPU hosts (Docker Compose with two Triton servers behind nginx, Kubernetes
manifests).  None of it can run here (no NVIDIA GPU, no container runtime), so the files are parsed and checked
against each other: the same Triton image and flags everywhere, probes on ports the container listens on, the
balancer's upstreams exactly the compose Triton services, the Service and autoscaler pointing at the Deployment,
the autoscaler's metric the one the Prometheus Adapter rule makes.  The repository entries they serve are
exported here with `cli.py export-triton` and parsed with Triton's own ModelConfig schema.  Where an `nginx`
binary is installed, the balancer's config also runs, in front of stand-in KServe v2 servers.
"""
import glob
import http.client
import http.server
import os
import re
import shlex
import shutil
import socket
import subprocess
import threading
from concurrent import futures

import pytest
import yaml
from balancer import free_ports, nginx_conf_for, nginx_version, wait_listening
from conftest import REPO, TINY_ID, run_cli, tiny_bundle

DEPLOY = os.path.join(REPO, "deploy")
K8S = os.path.join(DEPLOY, "k8s")
TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:"
TRITON_DEFAULT_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
REQUIRED_FLAGS = ("--model-repository=/models", "--model-control-mode=explicit")
# nginx's accepted values for proxy_next_upstream / grpc_next_upstream (ngx_http_proxy_module.c,
# ngx_http_grpc_module.c); anything else stops nginx at start ("invalid value")
NEXT_UPSTREAM_VALUES = {"error", "timeout", "invalid_header", "non_idempotent", "http_500", "http_502",
                        "http_503", "http_504", "http_403", "http_404", "http_429", "off"}


# --- reading the files ------------------------------------------------------------------------------------------

def yaml_files():
    return sorted(glob.glob(os.path.join(DEPLOY, "**", "*.yaml"), recursive=True)
                  + glob.glob(os.path.join(DEPLOY, "**", "*.yml"), recursive=True))


def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def compose():
    (doc,) = load_docs(os.path.join(DEPLOY, "compose.yaml"))
    return doc


def triton_services(doc):
    return {name: svc for name, svc in doc["services"].items() if svc.get("image", "").startswith(TRITON_IMAGE)}


def k8s_objects():
    """Every Kubernetes object in deploy/k8s, by (kind, name)."""
    objects = {}
    for path in sorted(glob.glob(os.path.join(K8S, "*.yaml"))):
        for doc in load_docs(path):
            if doc.get("kind") == "Kustomization":
                continue
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in objects, "{} defined twice".format(key)
            objects[key] = doc
    return objects


def the(objects, kind):
    found = [doc for (k, _), doc in objects.items() if k == kind]
    assert len(found) == 1, "expected one {} in deploy/k8s, found {}".format(kind, len(found))
    return found[0]


def argv(command):
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def triton_ports(args):
    """The ports a tritonserver command line listens on (Triton's defaults unless --http-port etc. say)."""
    ports = dict(TRITON_DEFAULT_PORTS)
    for arg in args:
        m = re.match(r"--(http|grpc|metrics)-port=(\d+)$", arg)
        if m:
            ports[m.group(1)] = int(m.group(2))
    return ports


def check_triton_args(args, where):
    assert args and args[0] == "tritonserver", "{}: not a tritonserver command line: {}".format(where, args)
    for flag in REQUIRED_FLAGS:
        assert flag in args, "{}: {} missing from {}".format(where, flag, args)
    loads = [a for a in args if a.startswith("--load-model")]
    # Triton: --load-model=* must be the only --load-model argument
    assert "--load-model=*" not in loads or len(loads) == 1, "{}: {}".format(where, loads)


def triton_container(deployment):
    (container,) = [c for c in deployment["spec"]["template"]["spec"]["containers"]
                    if c["image"].startswith(TRITON_IMAGE)]
    return container


# A small reader for nginx.conf: directives as (name, args, children or None), comments dropped.
NGINX_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|[{};]|[^\s{};"\']+')


def parse_nginx(text):
    text = "\n".join(re.sub(r"(^|\s)#.*$", "", line) for line in text.splitlines())
    tokens = NGINX_TOKEN.findall(text)

    def block(i, depth):
        items, words = [], []
        while i < len(tokens):
            token = tokens[i]
            i += 1
            if token in (";", "{"):
                assert words, "nginx.conf: a {!r} without a directive".format(token)
                children = None
                if token == "{":
                    children, i = block(i, depth + 1)
                items.append((words[0], words[1:], children))
                words = []
            elif token == "}":
                assert depth > 0 and not words, "nginx.conf: unbalanced braces"
                return items, i
            else:
                words.append(token[1:-1] if token[0] in "\"'" else token)
        assert depth == 0 and not words, "nginx.conf: unclosed block or directive"
        return items, i

    return block(0, 0)[0]


def directives(items, name):
    return [(args, children) for n, args, children in items if n == name]


def one(items, name):
    found = directives(items, name)
    assert len(found) == 1, "expected one {!r}, found {}".format(name, len(found))
    return found[0]


def nginx_conf():
    with open(os.path.join(DEPLOY, "nginx.conf")) as f:
        return f.read()


def nginx_http():
    top = parse_nginx(nginx_conf())
    one(top, "events")
    return one(top, "http")[1]


def upstreams(http_block):
    return {args[0]: [a[0] for a, _ in directives(children, "server")] for args, children in
            directives(http_block, "upstream")}


def servers_by_port(http_block):
    """nginx server blocks by the port they listen on."""
    found = {}
    for _, children in directives(http_block, "server"):
        (listen,) = [args for args, _ in directives(children, "listen")]
        found[int(listen[0].rsplit(":", 1)[-1])] = children
    return found


def locations(server):
    return {tuple(args): children for args, children in directives(server, "location")}


def passed_to(server, directive, scheme):
    """The upstream every `location` that proxies passes to, for DIRECTIVE (grpc_pass, proxy_pass)."""
    targets = {args[0] for children in locations(server).values() for args, _ in directives(children, directive)}
    assert len(targets) == 1, "{}: expected one target, found {}".format(directive, targets)
    (target,) = targets
    assert target.startswith(scheme), target
    return target[len(scheme):]


def setting(server, location_children, name):
    """A directive's arguments in a location, or inherited from its server block."""
    for items in (location_children, server):
        found = directives(items, name)
        if found:
            return found[-1][0]
    return None


# --- the files parse ---------------------------------------------------------------------------------------------

def test_every_yaml_file_parses_and_every_kubernetes_object_is_named():
    files = yaml_files()
    names = {os.path.relpath(p, DEPLOY) for p in files}
    assert {"compose.yaml", os.path.join("k8s", "triton-deployment.yaml"), os.path.join("k8s", "triton-hpa.yaml"),
            os.path.join("k8s", "triton-service.yaml"), os.path.join("k8s", "model-repository-pvc.yaml")} <= names
    for path in files:
        docs = load_docs(path)
        assert docs and all(isinstance(d, dict) for d in docs), path
        if path.startswith(K8S + os.sep):
            for doc in docs:
                assert doc.get("apiVersion") and doc.get("kind"), path
                assert doc["kind"] == "Kustomization" or doc["metadata"]["name"], path
    for (kind, name), doc in k8s_objects().items():
        if kind == "ConfigMap":  # config files carried as strings must parse too
            for key, value in doc["data"].items():
                if key.endswith((".yaml", ".yml")):
                    assert isinstance(yaml.safe_load(value), dict), (name, key)


def test_kustomization_applies_the_core_manifests():
    (kustomization,) = load_docs(os.path.join(K8S, "kustomization.yaml"))
    listed = kustomization["resources"]
    for resource in listed:
        assert os.path.isfile(os.path.join(K8S, resource)), resource
    kinds = {doc["kind"] for resource in listed for doc in load_docs(os.path.join(K8S, resource))}
    assert {"Deployment", "Service", "PersistentVolumeClaim", "HorizontalPodAutoscaler"} <= kinds


# --- compose.yaml ------------------------------------------------------------------------------------------------

def test_compose_runs_two_triton_servers_with_one_gpu_each_on_the_shared_read_only_repository():
    tritons = triton_services(compose())
    assert len(tritons) == 2, sorted(tritons)
    sources, gpus = set(), []
    for name, svc in tritons.items():
        check_triton_args(argv(svc["command"]), "compose " + name)
        mounts = [v for v in svc["volumes"] if isinstance(v, dict) and v.get("target") == "/models"]
        assert len(mounts) == 1 and mounts[0].get("read_only") is True, (name, svc["volumes"])
        sources.add(mounts[0]["source"])
        (device,) = svc["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"], (name, device)
        assert ("count" in device) != ("device_ids" in device), (name, device)  # Compose allows one of them
        if "device_ids" in device:
            assert len(device["device_ids"]) == 1, (name, device)
            gpus.append(str(device["device_ids"][0]))
        else:
            assert device["count"] == 1, (name, device)
        assert "ports" not in svc, "{} publishes ports; only the balancer should".format(name)
    assert len(sources) == 1, "the Triton services mount different repositories: {}".format(sources)
    assert len(set(gpus)) == len(gpus), "two Triton services reserve the same GPU: {}".format(gpus)


def test_compose_healthchecks_ask_each_server_if_it_is_ready_on_a_port_it_listens_on():
    for name, svc in triton_services(compose()).items():
        ports = triton_ports(argv(svc["command"]))
        assert {int(p) for p in svc["expose"]} == set(ports.values()), (name, svc["expose"], ports)
        test = svc["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL"), test
        (url,) = [a for a in " ".join(test[1:]).split() if a.startswith("http://")]
        m = re.match(r"http://(localhost|127\.0\.0\.1):(\d+)(/\S*)$", url)
        assert m, url
        assert int(m.group(2)) == ports["http"] and m.group(3) == "/v2/health/ready", (name, url)


def test_only_the_balancer_publishes_ports_and_it_starts_after_the_servers_with_this_nginx_conf():
    doc = compose()
    tritons = triton_services(doc)
    published = {name: svc["ports"] for name, svc in doc["services"].items() if svc.get("ports")}
    assert list(published) == ["balancer"], published
    balancer = doc["services"]["balancer"]
    assert balancer["image"] == "nginx:1.27"
    (conf,) = [v for v in balancer["volumes"] if v["target"] == "/etc/nginx/nginx.conf"]
    assert conf["read_only"] is True and os.path.samefile(os.path.join(DEPLOY, conf["source"]),
                                                          os.path.join(DEPLOY, "nginx.conf"))
    assert set(balancer["depends_on"]) == set(tritons)
    container_ports = {int(str(p).rsplit(":", 1)[-1]) for p in published["balancer"]}
    assert container_ports == set(servers_by_port(nginx_http())) == {8000, 8001}


# --- nginx.conf --------------------------------------------------------------------------------------------------

def test_nginx_upstreams_are_exactly_the_compose_triton_services():
    http_block = nginx_http()
    pools = upstreams(http_block)
    assert len(pools) == 2 and len(servers_by_port(http_block)) == 2, (pools, servers_by_port(http_block))
    tritons = triton_services(compose())
    by_port = servers_by_port(http_block)
    for listen, directive, scheme, kind in ((8001, "grpc_pass", "grpc://", "grpc"),
                                            (8000, "proxy_pass", "http://", "http")):
        pool = passed_to(by_port[listen], directive, scheme)
        expected = {"{}:{}".format(name, triton_ports(argv(svc["command"]))[kind]) for name, svc in tritons.items()}
        assert sorted(pools[pool]) == sorted(expected), (pool, pools[pool], expected)
    # each server on its own line, so a test or a user can substitute addresses line by line
    for line in nginx_conf().splitlines():
        if re.match(r"\s*server\s+[^{]*;", line):
            assert re.fullmatch(r"\s*server\s+\S+:\d+;", line), line


def test_nginx_speaks_http2_on_the_grpc_listener_and_retries_on_the_other_server():
    by_port = servers_by_port(nginx_http())
    grpc, rest = by_port[8001], by_port[8000]
    assert directives(grpc, "http2") == [(["on"], None)]
    assert not directives(rest, "http2")
    for server, prefix in ((grpc, "grpc"), (rest, "proxy")):
        for children in locations(server).values():
            if not directives(children, prefix + "_pass"):
                continue
            retry = setting(server, children, prefix + "_next_upstream")
            assert retry and set(retry) <= NEXT_UPSTREAM_VALUES, retry
            # inference requests are POSTs: nginx resends one already sent only with non_idempotent
            assert {"error", "timeout", "non_idempotent"} <= set(retry), retry
            assert int(setting(server, children, prefix + "_next_upstream_tries")[0]) >= 2
            for timeout in ("_connect_timeout", "_read_timeout", "_send_timeout"):
                assert setting(server, children, prefix + timeout), prefix + timeout
    assert {"http_502", "http_503"} <= set(setting(rest, [], "proxy_next_upstream"))


def test_nginx_refuses_the_repository_api_to_edges():
    by_port = servers_by_port(nginx_http())
    for port, path in ((8000, "/v2/repository/models/m/load"),
                       (8001, "/inference.GRPCInferenceService/RepositoryModelLoad")):
        matching = [(args, children) for args, children in locations(by_port[port]).items()
                    if (len(args) == 1 and path.startswith(args[0]) and args[0] != "/")
                    or (len(args) == 2 and args[0] == "~" and re.search(args[1], path))]
        assert matching and all(directives(c, "return") == [(["403"], None)] for _, c in matching), (port, matching)


# --- Kubernetes --------------------------------------------------------------------------------------------------

def test_the_deployment_runs_the_compose_image_with_the_same_flags_one_gpu_and_the_shared_claim():
    objects = k8s_objects()
    deployment = the(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    container = triton_container(deployment)
    images = {svc["image"] for svc in triton_services(compose()).values()}
    assert images == {container["image"]}, (images, container["image"])
    args = argv(container.get("command", [])) + argv(container.get("args", []))
    check_triton_args(args, "Deployment")
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == triton_ports(args) == TRITON_DEFAULT_PORTS, ports
    assert str(container["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    pod = deployment["spec"]["template"]["spec"]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/models"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert mount.get("readOnly") is True and volume["persistentVolumeClaim"]["readOnly"] is True
    claim = objects[("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])]
    assert claim["metadata"]["name"] == "model-repository" and claim["spec"]["accessModes"] == ["ReadWriteMany"]


def test_the_probes_ask_for_readiness_and_liveness_on_a_port_the_container_exposes():
    container = triton_container(the(k8s_objects(), "Deployment"))
    by_name = {p["name"]: p["containerPort"] for p in container["ports"]}
    http_port = triton_ports(argv(container.get("command", [])) + argv(container.get("args", [])))["http"]
    expected = {"readinessProbe": "/v2/health/ready", "livenessProbe": "/v2/health/live"}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        if probe not in container:
            assert probe == "startupProbe", "{} missing".format(probe)
            continue
        get = container[probe]["httpGet"]
        port = by_name.get(get["port"], get["port"])
        assert port in by_name.values() and port == http_port, (probe, get)
        assert get["path"] == expected.get(probe, get["path"]) and get["path"].startswith("/v2/health/"), get


def test_the_service_selects_the_deployments_pods_on_their_named_ports():
    objects = k8s_objects()
    deployment, service = the(objects, "Deployment"), the(objects, "Service")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = service["spec"]["selector"]
    assert selector and selector.items() <= labels.items(), (selector, labels)
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    container_ports = {p["name"]: p["containerPort"] for p in triton_container(deployment)["ports"]}
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert set(ports) == {"http", "grpc", "metrics"}
    for name, port in ports.items():
        target = port.get("targetPort", port["port"])
        assert target in container_ports or target in container_ports.values(), (name, target)
        assert port["port"] == TRITON_DEFAULT_PORTS[name]
    assert ports["grpc"]["appProtocol"] == "grpc"


def test_the_autoscaler_scales_the_deployment_on_the_metric_the_adapter_rule_makes():
    objects = k8s_objects()
    deployment, hpa = the(objects, "Deployment"), the(objects, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment",
                                                                      deployment["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] <= deployment["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["target"]["type"] == "AverageValue"
    name = metric["pods"]["metric"]["name"]
    rules = [rule for doc in objects.values() if doc["kind"] == "ConfigMap"
             for value in doc["data"].values() for rule in (yaml.safe_load(value) or {}).get("rules", [])]
    (rule,) = [r for r in rules if r["name"]["as"] == name]
    assert "nv_inference_queue_duration_us" in rule["seriesQuery"]
    for counter in ("nv_inference_queue_duration_us", "nv_inference_request_success"):
        assert "rate({}{{<<.LabelMatchers>>}}".format(counter) in rule["metricsQuery"], counter
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}  # a Pods metric is per pod
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == TRITON_DEFAULT_PORTS["metrics"]


def test_the_kserve_alternative_serves_the_same_claim_with_the_same_triton_release():
    objects = k8s_objects()
    isvcs = [doc for doc in objects.values() if doc["kind"] == "InferenceService"]
    if not isvcs:
        pytest.skip("no KServe InferenceService shipped")
    (isvc,) = isvcs
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    model = isvc["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "triton"
    image = triton_container(the(objects, "Deployment"))["image"]
    assert image == TRITON_IMAGE + model["runtimeVersion"]
    assert model["storageUri"].rstrip("/") == "pvc://" + the(objects, "PersistentVolumeClaim")["metadata"]["name"]
    assert str(model["resources"]["limits"]["nvidia.com/gpu"]) == "1"


# --- the repository entries these files serve ---------------------------------------------------------------------

@pytest.fixture
def model_config():
    pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient (the triton extra) missing")
    from google.protobuf import text_format

    def parse(entry):
        with open(os.path.join(str(entry), "config.pbtxt")) as f:
            return text_format.Parse(f.read(), pb2.ModelConfig())
    parse.pb2 = pb2
    return parse


@pytest.mark.parametrize("platform, args, model_file", [
    ("onnxruntime", ["--kind", "gpu", "--tensorrt", "--instances", "2", "--max-batch", "16"], "model.onnx"),
    ("pytorch", ["--kind", "gpu"], "model.pt"),
    ("python", ["--kind", "gpu"], "model.py"),
])
def test_export_triton_writes_an_entry_tritons_schema_parses(tiny_bundles, tmp_path, model_config, platform, args,
                                                            model_file):
    repo = tmp_path / "model_repository"
    proc = run_cli("export-triton", tiny_bundle(tiny_bundles, 4), "--repo", repo, "--platform", platform, *args)
    assert proc.returncode == 0, proc.stderr
    entry = repo / (TINY_ID + "-s4")
    config = model_config(entry)
    assert config.name == entry.name  # Triton requires the directory's name
    assert (config.backend if platform == "python" else config.platform) == \
        {"onnxruntime": "onnxruntime_onnx", "pytorch": "pytorch_libtorch", "python": "python"}[platform]
    assert [model_config.pb2.ModelInstanceGroup.Kind.Name(g.kind) for g in config.instance_group] == ["KIND_GPU"]
    assert (entry / "1" / model_file).is_file()
    if platform == "onnxruntime":
        assert config.max_batch_size == 16 and config.instance_group[0].count == 2
        assert [a.name for a in config.optimization.execution_accelerators.gpu_execution_accelerator] == ["tensorrt"]


def readme_export_commands():
    with open(os.path.join(DEPLOY, "README.md")) as f:
        text = f.read().replace("\\\n", " ")
    return [shlex.split(line) for line in text.splitlines() if line.strip().startswith("python cli.py export-triton")]


def test_the_readmes_export_commands_run_and_fill_one_repository(tiny_bundles, tmp_path, model_config):
    commands = readme_export_commands()
    assert commands
    repo = tmp_path / "model_repository"
    names = []
    for split, words in zip((4, 5, 3, 6), commands):
        words = list(words)
        words[3] = str(tiny_bundle(tiny_bundles, split))  # python cli.py export-triton BUNDLE ...
        words[words.index("--repo") + 1] = str(repo)
        proc = run_cli(*words[2:])
        assert proc.returncode == 0, (words, proc.stderr)
        names.append(words[words.index("--name") + 1] if "--name" in words else "{}-s{}".format(TINY_ID, split))
    assert sorted(os.listdir(str(repo))) == sorted(names)
    for name in names:
        assert model_config(repo / name).name == name


# --- the balancer, run (where nginx is installed) ------------------------------------------------------------------

class Dropper(threading.Thread):
    """A server that reads a request and hangs up without answering: one that died mid-request."""

    def __init__(self):
        super().__init__(daemon=True)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]

    def run(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    conn.recv(65536)
                except OSError:
                    pass


class EchoHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, code, body):
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.reply(200 if self.path == "/v2/health/ready" else 404, b"")

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.reply(200 if self.path.endswith("/infer") else 404, body)


def grpc_stand_in():
    """A KServe v2 gRPC server (tritonclient's service definition) that is ready and echoes its input."""
    grpc = pytest.importorskip("grpc")
    pytest.importorskip("tritonclient.grpc")
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    class Echo(service_pb2_grpc.GRPCInferenceServiceServicer):
        def ServerReady(self, request, context):
            return service_pb2.ServerReadyResponse(ready=True)

        def ModelInfer(self, request, context):
            reply = service_pb2.ModelInferResponse(model_name=request.model_name, id=request.id)
            reply.outputs.add(name="output", datatype=request.inputs[0].datatype, shape=request.inputs[0].shape)
            reply.raw_output_contents.append(request.raw_input_contents[0])
            return reply

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Echo(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


@pytest.mark.skipif(nginx_version() is None or nginx_version() < (1, 19, 5),
                    reason="no nginx (1.19.5 or later) installed: the balancer is checked by reading its config only")
def test_the_balancer_sends_a_failed_request_to_the_other_server_and_refuses_the_repository_api(tmp_path):
    import numpy as np
    grpcclient = pytest.importorskip("tritonclient.grpc")
    from tritonclient.utils import InferenceServerException

    dropper = Dropper()
    dropper.start()
    grpc_server, grpc_port = grpc_stand_in()
    rest = http.server.ThreadingHTTPServer(("127.0.0.1", 0), EchoHandler)
    threading.Thread(target=rest.serve_forever, daemon=True).start()
    # HTTP: the first server reads each request and hangs up.  gRPC: the first server is down (nothing listens).
    # nginx streams a gRPC request body unbuffered, so it never resends one it has sent (the dropper would fail
    # that request with a 502); what it does resend is a request to a server it cannot connect to.
    down_port, http_port, grpc_listen = free_ports(3)
    dropped, down = "127.0.0.1:{}".format(dropper.port), "127.0.0.1:{}".format(down_port)
    listens = {8000: http_port, 8001: grpc_listen}
    conf = nginx_conf_for(nginx_conf(), {"triton_grpc": [down, "127.0.0.1:{}".format(grpc_port)],
                                         "triton_http": [dropped, "127.0.0.1:{}".format(rest.server_port)]},
                          listens, tmp_path, http2_directive=nginx_version() >= (1, 25, 1))
    (tmp_path / "nginx.conf").write_text(conf)
    log = open(str(tmp_path / "out.log"), "w")
    proc = subprocess.Popen([shutil.which("nginx"), "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"),
                             "-e", "stderr", "-g", "daemon off; pid {}/nginx.pid;".format(tmp_path)],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        for port in listens.values():
            wait_listening(port, proc)
        body = bytes(range(256)) * 64
        conn = http.client.HTTPConnection("127.0.0.1", listens[8000], timeout=10)
        for _ in range(4):  # the first goes to the dropper (round robin) and is sent again to the other
            conn.request("POST", "/v2/models/m/infer", body=body)
            reply = conn.getresponse()
            assert (reply.status, reply.read()) == (200, body)
        for method, path in (("POST", "/v2/repository/models/m/load"), ("POST", "/v2/repository/index")):
            conn.request(method, path, body=b"{}")
            reply = conn.getresponse()
            reply.read()
            assert reply.status == 403, path
        conn.close()

        client = grpcclient.InferenceServerClient("127.0.0.1:{}".format(listens[8001]))
        try:
            assert client.is_server_ready(client_timeout=10)  # the first gRPC call: refused by the first server, sent to the other
            x = np.arange(32, dtype=np.float32).reshape(1, 32)
            for _ in range(4):
                tensor = grpcclient.InferInput("boundary", list(x.shape), "FP32")
                tensor.set_data_from_numpy(x)
                assert np.array_equal(client.infer("m", [tensor], client_timeout=10).as_numpy("output"), x)
            with pytest.raises(InferenceServerException):
                client.load_model("m")
        finally:
            client.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()
        rest.shutdown()
        grpc_server.stop(0)
        dropper.sock.close()
    lines = (tmp_path / "out.log").read_text().splitlines()
    def retried(first, path):
        return [line for line in lines if "upstream={}, 127.0.0.1:".format(first) in line and '" 200 ' in line
                and path in line]
    assert retried(dropped, "/v2/models/m/infer"), "\n".join(lines)
    assert retried(down, "/inference.GRPCInferenceService/"), "\n".join(lines)
