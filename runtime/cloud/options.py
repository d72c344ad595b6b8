"""The options of ``serve-cloud`` (defaults as on the command line)."""
from runtime.options import Options


class ServeOptions(Options):
    host = "127.0.0.1"
    port = 9999
    artifacts = "artifacts"  # the store of bundles served
    backend = "onnx"
    device = "auto"
    max_frame_mb = 64.0
    threads = 0
    allow_push = False
    admin_token = None
    export_model = None      # export splits of this model on demand
    export_weights = None
    export_random_init = False
    export_input_shape = None
    max_batch = 1
    max_delay_ms = 2.0
    max_connections = 256
    read_timeout = 30.0
    hello_timeout = 10.0
    tls_cert = None
    tls_key = None
    tls_client_ca = None
    token = None
    cuda_graphs = False
