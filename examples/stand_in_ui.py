#!/usr/bin/env python3
"""Stand-in UI for the tests and the demo of sd-webui-supervisor. It is not a UI.

It pretends to be Stable Diffusion WebUI Forge, AUTOMATIC1111 or ComfyUI well enough
for a supervisor, without a GPU: it accepts exactly the real UIs' command-line flags
(anything else exits 2, as argparse does in the real ones), binds where they bind,
answers the endpoints a supervisor uses with the real JSON shapes (readiness, queue and
busy state, options, refresh-*, txt2img / prompt jobs with a tiny PNG as their picture,
ComfyUI's /history outputs and /view, ComfyUI's /ws status messages),
keeps its data where they keep it, and reacts to signals the way they do
(taken from the real UIs' sources and from responses captured from running ones).
Python 3.11, standard library only.

Environment:
  STANDIN_FLAVOR         forge (default) | a1111 | comfyui
  STANDIN_START_DELAY    seconds to wait before listening (like a slow start)
  STANDIN_JOB_SECONDS    seconds one job holds the queue (default 1); a txt2img body or
                         a /prompt body may override it with "stand_in_seconds"
                         Any request's query may add "stand_in_body_delay=S": the answer's
                         head is sent, then S seconds pass before its body (a slow answer
                         that a UI exiting meanwhile cuts off)
  STANDIN_STALL_AFTER    a job's progress stops S seconds into it (Forge/A1111: the sampling
                         step in /sdapi/v1/progress; ComfyUI: its "progress" messages on
                         /ws) and the job runs until interrupted, like a UI whose sampler
                         hangs
  STANDIN_STALL_DEAF     1: the interrupt does not end a stalled job either (a UI stuck in
                         a CUDA call never checks its interrupt flag)
  STANDIN_JOB_OUTPUT     a line printed on stderr when a job starts, the way a UI prints a
                         traceback (e.g. "RuntimeError: CUDA error: an illegal memory
                         access was encountered")
  STANDIN_CRASH_AFTER    exit with STANDIN_EXIT_CODE (default 1) N seconds after start
  STANDIN_HANG_AFTER     after N seconds accept connections but never answer
  STANDIN_IGNORE_SIGINT  1: SIGINT is ignored (SIG_IGN), like a UI that inherited it
  STANDIN_IMAGE_ERROR    image jobs fail at their end with this message: txt2img answers
                         HTTP 500 with Forge's/A1111's error body, a ComfyUI prompt ends in
                         history with status "error" and an execution_error message.
                         "@PATH": the error is PATH's content, only while PATH exists
  STANDIN_LOSE_FIRST_SIGINT  1: the first SIGINT is lost (recorded with "lost": true), like
                         a Forge/A1111 that gets it while importing torch (ui-apis.md §10)
  STANDIN_PRINT_ENV      1: print COMMANDLINE_ARGS and the STANDIN_* variables at start (to
                         check that a supervisor redacts what the UI prints)
  STANDIN_PRINT_REQUESTS 1: print "request METHOD PATH COMMANDLINE_ARGS=..." on stdout and on
                         stderr for every request (a UI that keeps logging; a print that
                         fails is recorded as print_failed instead)
  STANDIN_RECORD         file to append one JSON object per line to (O_APPEND, one
                         write per line, so several processes may share it)

Record events, each with "pid" and "t" (time.time()):
  start      argv, flavor, cwd, env (CUDA_*, STANDIN_*, ...), sig_ignored and sig_blocked
             (signal names at start; Python itself always ignores SIGPIPE and SIGXFSZ)
  listening  host, port
  request    method, path (no query), query, body (parsed JSON or null)
  job_start  id, kind ("txt2img" | "prompt");   job_end  id, kind, completed
  signal     signal ("SIGINT" | "SIGTERM" | "SIGHUP")
  exit       code, reason (before a deliberate exit)
  print_failed  stream, errno (STANDIN_PRINT_REQUESTS)

Forge and A1111 append shlex.split($COMMANDLINE_ARGS) to sys.argv at import and print
all of it ("Launching Web UI with arguments: ..."), and exit 1 at start when GitPython finds
no `git` on PATH ("Bad git executable"), as the real ones do. Forge (dfdcbab) has no lora
routes (404) and answers refresh-embeddings with 500 (ui-apis.md §10); /openapi.json lists
the routes that exist.

Like the real programs: a ComfyUI (and any flavor for SIGTERM/SIGHUP) that inherits
SIG_IGN keeps ignoring the signal, while Forge/A1111 install their own SIGINT handler.
"""

import argparse
import base64
import collections
import datetime
import hashlib
import json
import os
import random
import shlex
import shutil
import signal
import socket
import socketserver
import string
import struct
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

T0 = time.time()
FLAVOR = os.environ.get("STANDIN_FLAVOR", "").strip() or "forge"
COMFY = FLAVOR == "comfyui"


def env_float(name, default=None):
    value = os.environ.get(name, "").strip()
    return float(value) if value else default


def text_float(text):
    """A number of seconds from a query value; 0 when absent or not a number."""
    try:
        return max(0.0, float(text or 0))
    except ValueError:
        return 0.0


JOB_SECONDS = env_float("STANDIN_JOB_SECONDS", 1.0)
STALL_AFTER = env_float("STANDIN_STALL_AFTER")
STALL_DEAF = os.environ.get("STANDIN_STALL_DEAF") == "1"


def run_job(stop, seconds, on_step=None, steps=10):
    """Waits out one job of `seconds` in `steps` (`on_step(i, steps)` after each),
    or until `stop` is set (an interrupt): True when it completed. With
    STANDIN_STALL_AFTER it stalls instead."""
    if os.environ.get("STANDIN_JOB_OUTPUT"):
        say(os.environ["STANDIN_JOB_OUTPUT"], sys.stderr)
    stall = STALL_AFTER if STALL_AFTER is not None and STALL_AFTER < seconds else None
    started = time.time()
    for i in range(1, steps + 1):
        due = started + seconds * i / steps
        if stall is not None and due > started + stall:
            break
        if stop.wait(max(0.0, due - time.time())):
            return False
        if on_step is not None:
            on_step(i, steps)
    else:
        return True
    if stop.wait(max(0.0, started + stall - time.time())):
        return False
    record("job_stalled")
    if STALL_DEAF:
        threading.Event().wait()  # stuck for good; only a stop of the process ends it
    stop.wait()
    return False


def image_error():
    """STANDIN_IMAGE_ERROR now: the message, or None when image jobs succeed."""
    value = os.environ.get("STANDIN_IMAGE_ERROR", "")
    if value.startswith("@"):
        try:
            with open(value[1:], encoding="utf8") as file:
                return file.read().strip() or "stand-in image error"
        except OSError:
            return None
    return value or None
HUNG = threading.Event()

# ---------------------------------------------------------------------------------------
# Flags, from captures/forge-flags.txt (Forge and A1111) and captures/comfyui-flags.txt.
# Names without the leading "--"; -h/--help is argparse's own.

FORGE_SWITCHES = """
add-stop-route administrator all-in-fp16 all-in-fp32 allow-code always-batch-cond-uncond
always-cpu always-gpu always-high-vram always-low-vram always-no-vram always-normal-vram
always-offload-from-vram api api-log api-server-stop attention-pytorch attention-quad
attention-split autolaunch clip-in-fp16 clip-in-fp32 clip-in-fp8-e4m3fn clip-in-fp8-e5m2
controlnet-tracemalloc cuda-malloc cuda-stream deepdanbooru disable-all-extensions
disable-attention-upcast disable-console-progressbars disable-extra-extensions
disable-gpu-warning disable-ipex-hijack disable-model-loading-ram-optimization
disable-nan-check disable-opt-split-attention disable-safe-unpickle disable-tls-verify
disable-xformers do-not-download-clip dump-sysinfo enable-console-prompts
enable-insecure-extension-access force-enable-xformers force-upcast-attention freeze-settings
gradio-debug gradio-queue hide-ui-dir-config listen log-startup lowram lowvram medvram
medvram-sdxl no-download-sd-model no-gradio-queue no-half no-half-vae no-hashing
no-progressbar-hiding no-prompt-history nowebui opt-channelslast opt-sdp-attention
opt-sdp-no-mem-attention opt-split-attention opt-split-attention-invokeai
opt-split-attention-v1 opt-sub-quad-attention pin-shared-memory pytorch-deterministic
reinstall-torch reinstall-xformers share show-negative-prompt skip-google-blockly skip-install
skip-load-model-at-start skip-prepare-environment skip-python-version-check
skip-torch-cuda-test skip-version-check test-server ui-debug-mode unet-in-bf16 unet-in-fp16
unet-in-fp8-e4m3fn unet-in-fp8-e5m2 unix-filenames-sanitization unload-gfpgan upcast-sampling
update-all-extensions update-check use-ipex use-textbox-seed vae-in-bf16 vae-in-cpu vae-in-fp16
vae-in-fp32 xformers xformers-flash-attention
""".split()
FORGE_VALUED = """
api-auth bsrgan-models-path ckpt ckpt-dir clip-models-path codeformer-models-path config
controlnet-dir controlnet-loglevel controlnet-preprocessor-models-dir cors-allow-origins
cors-allow-origins-regex dat-models-path data-dir device-id directml embeddings-dir
esrgan-models-path filenames-max-length forge-ref-a1111-home freeze-settings-in-sections
freeze-specific-settings gfpgan-dir gfpgan-model gfpgan-models-path gpu-device-id
gradio-allowed-path gradio-auth gradio-auth-path gradio-img2img-tool gradio-inpaint-tool
hypernetwork-dir localizations-dir loglevel lora-dir lyco-dir-backcompat max-batch-count
models-dir ngrok ngrok-options ngrok-region port precision realesrgan-models-path
scunet-models-path server-name styles-file sub-quad-chunk-threshold sub-quad-kv-chunk-size
sub-quad-q-chunk-size subpath swinir-models-path text-encoder-dir
textual-inversion-templates-dir theme timeout-keep-alive tls-certfile tls-keyfile
ui-config-file ui-settings-file use-cpu vae-dir vae-path
""".split()
# Value types and arities that differ from "one string" (modules/cmd_args.py, backend/args.py).
FORGE_KWARGS = {
    "port": dict(type=int), "gpu-device-id": dict(type=int), "max-batch-count": dict(type=int),
    "sub-quad-q-chunk-size": dict(type=int), "sub-quad-kv-chunk-size": dict(type=int),
    "sub-quad-chunk-threshold": dict(type=int), "timeout-keep-alive": dict(type=int),
    "use-cpu": dict(nargs="+"), "directml": dict(type=int, nargs="?", const=-1),
    "precision": dict(choices=["full", "half", "autocast"]), "ngrok-options": dict(type=json.loads),
    "gradio-allowed-path": dict(action="append"), "styles-file": dict(action="append"),
}
FORGE_EXCLUSIVE = [
    "all-in-fp32 all-in-fp16", "unet-in-bf16 unet-in-fp16 unet-in-fp8-e4m3fn unet-in-fp8-e5m2",
    "vae-in-fp16 vae-in-fp32 vae-in-bf16", "attention-split attention-quad attention-pytorch",
    "clip-in-fp8-e4m3fn clip-in-fp8-e5m2 clip-in-fp16 clip-in-fp32",
    "force-upcast-attention disable-attention-upcast",
    "always-gpu always-high-vram always-normal-vram always-low-vram always-no-vram always-cpu",
]

COMFY_SWITCHES = """
async-offload auto-launch bf16-text-enc bf16-unet bf16-vae cache-classic cache-none cpu cpu-vae
cuda-malloc deterministic disable-all-custom-nodes disable-api-nodes disable-auto-launch
disable-cuda-malloc disable-ipex-optimize disable-metadata disable-mmap disable-smart-memory
disable-xformers dont-print-server dont-upcast-attention enable-compress-response-body
force-channels-last force-fp16 force-fp32 force-non-blocking force-upcast-attention
fp16-text-enc fp16-unet fp16-vae fp32-text-enc fp32-unet fp32-vae fp64-unet fp8_e4m3fn-text-enc
fp8_e4m3fn-unet fp8_e5m2-text-enc fp8_e5m2-unet fp8_e8m0fnu-unet gpu-only highvram log-stdout
lowvram mmap-torch-files multi-user normalvram novram quick-test-for-ci supports-fp8-compute
use-flash-attention use-pytorch-cross-attention use-quad-cross-attention use-sage-attention
use-split-cross-attention windows-standalone-build
""".split()
COMFY_VALUED = """
base-directory cache-lru comfy-api-base cuda-device database-url default-device
default-hashing-function directml enable-cors-header extra-model-paths-config fast
front-end-root front-end-version input-directory listen max-upload-size oneapi-device-selector
output-directory port preview-method preview-size reserve-vram temp-directory tls-certfile
tls-keyfile user-directory verbose whitelist-custom-nodes
""".split()


def existing_directory(path):
    """comfy/cli_args.py is_valid_directory: --user-directory must already exist."""
    if not os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"The path '{path}' does not exist.")
    return path


COMFY_KWARGS = {
    "port": dict(type=int, default=8188), "default-device": dict(type=int),
    "preview-size": dict(type=int), "cache-lru": dict(type=int, default=0),
    "reserve-vram": dict(type=float), "max-upload-size": dict(type=float),
    "listen": dict(nargs="?", const="0.0.0.0,::", default="127.0.0.1", metavar="IP"),
    "enable-cors-header": dict(nargs="?", const="*", metavar="ORIGIN"),
    "extra-model-paths-config": dict(nargs="+", action="append", metavar="PATH"),
    "directml": dict(type=int, nargs="?", const=-1), "fast": dict(nargs="*"),
    "whitelist-custom-nodes": dict(nargs="+", default=[]),
    "verbose": dict(nargs="?", const="DEBUG", default="INFO",
                    choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]),
    "preview-method": dict(choices=["none", "auto", "latent2rgb", "taesd"]),
    "default-hashing-function": dict(choices=["md5", "sha1", "sha256", "sha512"]),
    "user-directory": dict(type=existing_directory), "front-end-root": dict(type=existing_directory),
}
COMFY_EXCLUSIVE = [
    "cuda-malloc disable-cuda-malloc", "force-fp32 force-fp16",
    "fp32-unet fp64-unet bf16-unet fp16-unet fp8_e4m3fn-unet fp8_e5m2-unet fp8_e8m0fnu-unet",
    "fp16-vae fp32-vae bf16-vae",
    "fp8_e4m3fn-text-enc fp8_e5m2-text-enc fp16-text-enc fp32-text-enc bf16-text-enc",
    "cache-classic cache-lru cache-none", "force-upcast-attention dont-upcast-attention",
    "use-split-cross-attention use-quad-cross-attention use-pytorch-cross-attention "
    "use-sage-attention use-flash-attention",
    "gpu-only highvram normalvram lowvram novram cpu",
]


def build_parser():
    if COMFY:
        parser = argparse.ArgumentParser(prog="main.py")
        switches, valued, kwargs, exclusive = COMFY_SWITCHES, COMFY_VALUED, COMFY_KWARGS, COMFY_EXCLUSIVE
    else:
        parser = argparse.ArgumentParser(prog="launch.py")
        switches, valued, kwargs, exclusive = FORGE_SWITCHES, FORGE_VALUED, FORGE_KWARGS, FORGE_EXCLUSIVE
        parser.add_argument("-f", action="store_true", help=argparse.SUPPRESS)  # "allow root"
    owner = {}
    for group in exclusive:
        container = parser.add_mutually_exclusive_group()
        owner.update((name, container) for name in group.split())
    for name in switches:
        owner.get(name, parser).add_argument("--" + name, action="store_true")
    for name in valued:
        owner.get(name, parser).add_argument("--" + name, **kwargs.get(name, {}))
    return parser


# ---------------------------------------------------------------------------------------
# Recording and logging

RECORD_PATH = os.environ.get("STANDIN_RECORD", "")
RECORD_ENV_PREFIXES = ("STANDIN_", "CUDA_", "HIP_", "SD_WEBUI", "COMMANDLINE_ARGS", "HF_", "PYTORCH_")


def record(event, **fields):
    """Append one JSON line with a single write(2) on an O_APPEND descriptor."""
    if not RECORD_PATH:
        return
    line = json.dumps({"event": event, **fields, "pid": os.getpid(), "t": time.time()}) + "\n"
    fd = os.open(RECORD_PATH, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def signal_set(field):
    """Names of the signals in /proc/self/status's SigIgn or SigBlk mask."""
    try:
        with open("/proc/self/status") as status:
            mask = next(int(line.split()[1], 16) for line in status if line.startswith(field + ":"))
    except (OSError, StopIteration, ValueError):
        return None
    names = []
    for number in range(1, 65):
        if mask & (1 << (number - 1)):
            try:
                names.append(signal.Signals(number).name)
            except ValueError:
                names.append(str(number))
    return names


def say(text, stream=None):
    """Log a line like the real UI does: Forge/A1111 on stdout, ComfyUI on stderr."""
    stream = stream or (sys.stderr if COMFY and not ARGS.log_stdout else sys.stdout)
    print(text, file=stream, flush=True)


def deliberate_exit(code, reason):
    record("exit", code=code, reason=reason)
    os._exit(code)


# ---------------------------------------------------------------------------------------
# HTTP plumbing

class Reply:
    def __init__(self, status=200, body=b"", content_type="application/json", headers=None):
        self.status, self.body, self.content_type = status, body, content_type
        self.headers = headers or {}


def fastapi_json(obj, status=200):  # FastAPI: compact JSON
    return Reply(status, json.dumps(obj, separators=(",", ":")).encode())


def aiohttp_json(obj, status=200):  # aiohttp json_response: json.dumps defaults
    return Reply(status, json.dumps(obj).encode(), "application/json; charset=utf-8")


def aiohttp_text(text, status=200):
    return Reply(status, text.encode(), "text/plain; charset=utf-8")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def version_string(self):
        return "Python/3.11 aiohttp/3.12.15" if COMFY else "uvicorn"

    def log_message(self, *args):
        pass

    def setup(self):
        super().setup()
        # Like the real UIs: uvicorn and aiohttp run on asyncio, which sets
        # TCP_NODELAY on every connection. Without it the header and body writes
        # of one answer meet Nagle and the client's delayed ACK on a kept-alive
        # connection: +40 ms per answer.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def handle_one_request(self):
        if HUNG.is_set():
            threading.Event().wait()  # the connection is accepted, the answer never comes
        super().handle_one_request()

    def do_GET(self):
        self.dispatch("GET")

    def do_POST(self):
        self.dispatch("POST")

    def dispatch(self, method):
        url = urlsplit(self.path)
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        record("request", method=method, path=url.path, query=url.query, body=body)
        if os.environ.get("STANDIN_PRINT_REQUESTS") == "1":
            line = f"request {method} {url.path} COMMANDLINE_ARGS={os.environ.get('COMMANDLINE_ARGS', '')}"
            for stream in (sys.stdout, sys.stderr):
                try:
                    print(line, file=stream, flush=True)
                except OSError as e:
                    record("print_failed", stream=stream.name, errno=e.errno)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            reply = APP.route(method, url.path, query, body, self)
            if reply is not None:  # None: the handler took over the connection (WebSocket)
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(reply.body)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                # A slow answer (a large picture to a slow client): the head is
                # out, the body follows; a UI that exits meanwhile cuts it off.
                delay = text_float(query.get("stand_in_body_delay"))
                if delay > 0:
                    time.sleep(delay)
                self.wfile.write(reply.body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def server_bind(self):  # skip HTTPServer's getfqdn(), which may wait on DNS
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


class Server6(Server):
    address_family = socket.AF_INET6


def serve(host, port):
    return (Server6 if ":" in host else Server)((host, port), Handler)


def route_table(app, table, method, path):
    """Look a path up in {path: {method: fn}}; FastAPI 404/405 answers otherwise."""
    methods = table.get(path)
    if methods is None:
        return None
    return methods.get(method) or (lambda *a: app.method_not_allowed())


# ---------------------------------------------------------------------------------------
# Forge / AUTOMATIC1111

class FifoLock:
    """modules/fifo_lock.py: waiters get the lock in arrival order (direct hand-over)."""

    def __init__(self):
        self._mutex = threading.Lock()
        self._waiters = collections.deque()
        self._held = False

    def __enter__(self):
        with self._mutex:
            if not self._held and not self._waiters:
                self._held = True
                return self
            ticket = threading.Event()
            self._waiters.append(ticket)
        ticket.wait()
        return self

    def __exit__(self, *exc):
        with self._mutex:
            if self._waiters:
                self._waiters.popleft().set()
            else:
                self._held = False


TINY_PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGNoaGgAAAMEAYFL09IQAAAAAElFTkSuQmCC"  # 1x1 grey
CAPTURE_DATA_DIR = "/var/lib/sd-webui-forge"  # forge-options.json was taken with this data dir


class ForgeApp:
    def __init__(self, args):
        self.args = args
        self.data_dir = os.path.abspath(args.data_dir or os.getcwd())
        self.models_dir = os.path.abspath(args.models_dir) if args.models_dir else os.path.join(self.data_dir, "models")
        self.config_path = args.ui_settings_file or os.path.join(self.data_dir, "config.json")
        folders = ["Stable-diffusion", "Lora", "hypernetworks"]
        if FLAVOR == "forge":
            folders += ["ControlNet", "ControlNetPreprocessor", "diffusers", "Codeformer", "GFPGAN"]
        for folder in folders:
            os.makedirs(os.path.join(self.models_dir, folder), exist_ok=True)
        os.makedirs(os.path.join(self.data_dir, "extensions"), exist_ok=True)
        self.defaults = {key: value.replace(CAPTURE_DATA_DIR, self.data_dir) if isinstance(value, str) else value
                         for key, value in json.loads(OPTIONS_JSON).items()}
        self.options = {**self.defaults, **self.load_config()}
        self.queue_lock = FifoLock()
        self.mutex = threading.Lock()
        self.pending = collections.OrderedDict()  # task id -> enqueue time (waiting for the lock)
        self.current_task = None
        self.finished = collections.deque(maxlen=16)
        self.state = dict(skipped=False, interrupted=False, stopping_generation=False, job="", job_count=0,
                          job_timestamp="0", job_no=0, sampling_step=0, sampling_steps=0)
        self.job_started = self.job_seconds = 0.0
        self.interrupt_event = None
        self.checkpoints = self.scan_checkpoints()
        # A1111 splits each credential on every ":", so a ":" in a password dies here too
        self.api_auth = dict(cred.split(":") for cred in args.api_auth.split(",")) if args.api_auth else None
        internal = {} if args.nowebui else {
            "/internal/ping": {"GET": lambda q, b, h: fastapi_json({})},
            "/internal/pending-tasks": {"GET": self.pending_tasks},
            "/internal/progress": {"POST": self.task_progress},
        }
        sdapi = {} if not (args.api or args.nowebui) else {
            "/sdapi/v1/progress": {"GET": self.progress},
            "/sdapi/v1/options": {"GET": self.get_options, "POST": self.set_options},
            "/sdapi/v1/cmd-flags": {"GET": lambda q, b, h: fastapi_json(vars(self.args))},
            "/sdapi/v1/sd-models": {"GET": lambda q, b, h: fastapi_json(self.checkpoints)},
            "/sdapi/v1/refresh-checkpoints": {"POST": self.refresh_checkpoints},
            "/sdapi/v1/unload-checkpoint": {"POST": self.unload_checkpoint},
            "/sdapi/v1/refresh-vae": {"POST": self.locked_noop},
            "/sdapi/v1/refresh-embeddings": {"POST": self.refresh_embeddings},
            "/sdapi/v1/txt2img": {"POST": self.txt2img},
            "/sdapi/v1/interrupt": {"POST": self.interrupt},
        }
        # A1111's Lora extension registers its routes on the app itself, with or without
        # --api; Forge dfdcbab registers none (ui-apis.md §10: 404, not in /openapi.json)
        lora = {} if FLAVOR == "forge" else {
            "/sdapi/v1/loras": {"GET": lambda q, b, h: fastapi_json([])},
            "/sdapi/v1/refresh-loras": {"POST": lambda q, b, h: fastapi_json(None)},
        }
        self.routes = {"/": {"GET": lambda q, b, h: Reply(200, INDEX_HTML.encode(), "text/html")},
                       "/openapi.json": {"GET": self.openapi},
                       **internal, **sdapi, **lora}

    def route(self, method, path, query, body, handler):
        fn = route_table(self, self.routes, method, path)
        if fn is None:
            return fastapi_json({"detail": "Not Found"}, 404)
        if self.api_auth and path.startswith("/sdapi/") and path not in ("/sdapi/v1/refresh-loras",
                                                                          "/sdapi/v1/loras"):
            denied = self.check_auth(handler.headers.get("Authorization", ""))
            if denied:
                reply = fastapi_json({"detail": denied}, 401)
                reply.headers["WWW-Authenticate"] = "Basic"
                return reply
        try:
            return fn(query, body, handler)
        except Exception as exc:  # webui._handle_exception (Forge) / api_middleware (A1111)
            key = "message" if FLAVOR == "forge" else "errors"
            return fastapi_json({"error": type(exc).__name__, "detail": "", "body": "", key: str(exc)}, 500)

    def method_not_allowed(self):
        return fastapi_json({"detail": "Method Not Allowed"}, 405)

    def check_auth(self, header):
        """--api-auth: FastAPI HTTPBasic on the /sdapi routes; None when allowed."""
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return "Not authenticated"
        try:
            user, _, password = base64.b64decode(encoded).decode().partition(":")
        except ValueError:
            return "Invalid authentication credentials"
        return None if self.api_auth.get(user) == password else "Incorrect username or password"

    # -- options ---------------------------------------------------------------------
    def load_config(self):
        try:
            with open(self.config_path, encoding="utf8") as file:
                data = json.load(file)
            return data if isinstance(data, dict) else {}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            say(f"*** Could not load settings\nThe config file \"{self.config_path}\" is likely corrupted "
                f"({exc})\nReverting config to default")
            return {}

    def get_options(self, query, body, handler):
        with self.mutex:
            return fastapi_json(self.options)

    def set_options(self, query, body, handler):
        if not isinstance(body, dict):
            return fastapi_json({"detail": [{"loc": ["body"], "msg": "field required", "type": "value_error.missing"}]}, 422)
        checkpoint = body.get("sd_model_checkpoint")
        if checkpoint is not None and checkpoint not in self.checkpoint_aliases():
            raise RuntimeError(f"model {checkpoint!r} not found")
        with self.mutex:
            for key, value in body.items():  # like Options.set: in order, no rollback on error
                if self.options.get(key) == value:
                    continue
                if key not in self.defaults:
                    raise KeyError(key)
                if self.args.freeze_settings:
                    raise AssertionError("changing settings is disabled")
                self.options[key] = value
            temp = self.config_path + ".tmp"
            with open(temp, "w", encoding="utf8") as file:
                json.dump(self.options, file, indent=4, ensure_ascii=False)
            os.replace(temp, self.config_path)
        return fastapi_json(None)

    # -- checkpoints -----------------------------------------------------------------
    def scan_checkpoints(self):
        extensions = (".ckpt", ".safetensors", ".gguf") if FLAVOR == "forge" else (".ckpt", ".safetensors")
        roots = [os.path.join(self.models_dir, "Stable-diffusion")]
        if self.args.ckpt_dir:
            roots.append(os.path.abspath(self.args.ckpt_dir))
        found = []
        for root in roots:
            for dirpath, _, files in sorted(os.walk(root, followlinks=True)):
                for name in sorted(files):
                    path = os.path.join(dirpath, name)
                    lower = name.lower()
                    if (lower.endswith(extensions) and not lower.endswith((".vae.ckpt", ".vae.safetensors"))
                            and os.path.exists(path)):  # broken symlinks are skipped
                        found.append(self.checkpoint_info(path, root))
        return found

    @staticmethod
    def checkpoint_info(path, root):
        name = os.path.relpath(path, root)
        config = os.path.splitext(path)[0] + ".yaml"
        return {"title": name, "model_name": os.path.splitext(name.replace("/", "_"))[0], "hash": None,
                "sha256": None, "filename": path, "config": config if os.path.exists(config) else None}

    def checkpoint_aliases(self):
        aliases = set()
        for info in self.checkpoints:
            base = os.path.splitext(os.path.basename(info["filename"]))[0]
            aliases.update((info["title"], info["model_name"], base))
        return aliases

    def refresh_checkpoints(self, query, body, handler):
        with self.queue_lock:
            self.checkpoints = self.scan_checkpoints()
        return fastapi_json(None)

    def refresh_embeddings(self, query, body, handler):
        if FLAVOR == "forge":  # Forge dfdcbab: AttributeError inside the route -> 500
            raise AttributeError("'Api' object has no attribute 'embedding_db'")
        return self.locked_noop(query, body, handler)

    def openapi(self, query, body, handler):
        """FastAPI's schema: every route with its methods (the schema route itself is not listed)."""
        paths = {path: {method.lower(): {"summary": path} for method in methods}
                 for path, methods in self.routes.items() if path != "/openapi.json"}
        return fastapi_json({"openapi": "3.1.0", "info": {"title": "FastAPI", "version": "0.1.0"},
                             "paths": paths})

    def locked_noop(self, query, body, handler):
        with self.queue_lock:
            pass
        return fastapi_json(None)

    # -- queue and jobs --------------------------------------------------------------
    def pending_tasks(self, query, body, handler):
        with self.mutex:
            return fastapi_json({"size": len(self.pending), "tasks": list(self.pending)})

    def progress(self, query, body, handler):
        with self.mutex:
            if self.state["job_count"] == 0:
                return fastapi_json({"progress": 0.0, "eta_relative": 0.0, "state": self.state,
                                     "current_image": None, "textinfo": None})
            elapsed = time.time() - self.job_started
            if STALL_AFTER is not None:
                elapsed = min(elapsed, STALL_AFTER)
            steps = self.state["sampling_steps"]
            self.state["sampling_step"] = min(steps, int(steps * elapsed / max(self.job_seconds, 1e-6)))
            progress = min(1.0, 0.01 + self.state["job_no"] / self.state["job_count"]
                           + self.state["sampling_step"] / max(steps, 1) / self.state["job_count"])
            return fastapi_json({"progress": progress, "eta_relative": elapsed / progress - elapsed,
                                 "state": self.state, "current_image": None, "textinfo": None})

    def task_progress(self, query, body, handler):
        task = (body or {}).get("id_task")
        with self.mutex:
            active, queued, completed = task == self.current_task, task in self.pending, task in self.finished
            reply = {"active": active, "queued": queued, "completed": completed, "progress": None, "eta": None,
                     "live_preview": None, "id_live_preview": -1, "textinfo": "Waiting..."}
            if queued:
                reply["textinfo"] = f"In queue: {list(self.pending).index(task) + 1}/{len(self.pending)}"
            elif active:
                elapsed = time.time() - self.job_started
                done = min(1.0, elapsed / max(self.job_seconds, 1e-6))
                reply.update(progress=done, eta=max(0.0, self.job_seconds - elapsed), textinfo=None)
        return fastapi_json(reply)

    def txt2img(self, query, body, handler):
        if not isinstance(body, dict):
            return fastapi_json({"detail": [{"loc": ["body"], "msg": "field required", "type": "value_error.missing"}]}, 422)
        wanted = (body.get("override_settings") or {}).get("sd_model_checkpoint")
        if wanted is not None and wanted not in self.checkpoint_aliases():
            raise RuntimeError(f"model {wanted!r} not found")  # stand-in's choice, like set_options
        task_id = body.get("force_task_id") or "task(txt2img-{})".format(
            "".join(random.choices(string.ascii_uppercase + string.digits, k=7)))
        seconds = float(body.get("stand_in_seconds", JOB_SECONDS))
        with self.mutex:
            self.pending[task_id] = time.time()
        with self.queue_lock:
            stop = threading.Event()
            steps = int(body.get("steps") or 50)
            with self.mutex:
                self.pending.pop(task_id, None)
                self.current_task, self.interrupt_event = task_id, stop
                self.job_started, self.job_seconds = time.time(), seconds
                self.state.update(job="scripts_txt2img", job_count=1, job_no=0, sampling_step=0,
                                  sampling_steps=steps, skipped=False, interrupted=False, stopping_generation=False,
                                  job_timestamp=datetime.datetime.now().strftime("%Y%m%d%H%M%S"))
            record("job_start", id=task_id, kind="txt2img")
            completed = run_job(stop, seconds)
            error = image_error() if completed else None
            record("job_end", id=task_id, kind="txt2img", completed=completed and not error)
            with self.mutex:
                if completed:
                    self.state.update(job_no=1, sampling_step=steps)
                self.state.update(job="", job_count=0)
                self.current_task, self.interrupt_event = None, None
                self.finished.append(task_id)
        if error:  # modules/call_queue.py turns it into the API middleware's 500
            raise RuntimeError(error)
        return fastapi_json({"images": [TINY_PNG] if completed else [], "parameters": body,
                             "info": json.dumps(self.txt2img_info(body, completed))})

    def txt2img_info(self, body, completed):
        """processing.py Processed.js(): the parameters used, with the seed actually drawn."""
        if not completed:
            return {}
        seed = int(body.get("seed", -1))
        seed = random.randrange(4294967295) if seed == -1 else seed
        prompt = body.get("prompt", "")
        return {"prompt": prompt, "all_prompts": [prompt], "negative_prompt": body.get("negative_prompt", ""),
                "all_negative_prompts": [body.get("negative_prompt", "")], "seed": seed, "all_seeds": [seed],
                "subseed": seed + 1, "all_subseeds": [seed + 1], "subseed_strength": 0,
                "width": body.get("width", 512), "height": body.get("height", 512),
                "sampler_name": body.get("sampler_name", "Euler a"), "cfg_scale": body.get("cfg_scale", 7.0),
                "steps": body.get("steps", 50), "batch_size": 1, "restore_faces": None,
                "sd_model_name": self.options.get("sd_model_checkpoint"), "seed_resize_from_w": -1,
                "seed_resize_from_h": -1, "denoising_strength": None, "extra_generation_params": {},
                "index_of_first_image": 0, "infotexts": [f"{prompt}\nSteps: {body.get('steps', 50)}, Seed: {seed}"],
                "styles": [], "job_timestamp": self.state["job_timestamp"], "clip_skip": 1,
                "is_using_inpainting_conditioning": False, "version": "stand-in"}

    def unload_checkpoint(self, query, body, handler):
        """api.py unloadapi: the weights leave VRAM (Forge loads them again for the
        next job by itself; A1111 keeps them in RAM and reloads only on
        reload-checkpoint). Recorded as "unload"."""
        record("unload", flavor=FLAVOR)
        return fastapi_json({})

    def interrupt(self, query, body, handler):
        with self.mutex:
            self.state["interrupted"] = True
            if self.interrupt_event is not None:
                self.interrupt_event.set()
        return fastapi_json({})

    # -- lifecycle -------------------------------------------------------------------
    def start_listening(self):
        host = self.args.server_name or ("0.0.0.0" if self.args.listen or self.args.nowebui else "127.0.0.1")
        if self.args.port is not None:
            ports = [self.args.port]
        else:  # gradio takes the first free port from 7860; uvicorn (--nowebui) uses 7861
            ports = [7861] if self.args.nowebui else list(range(7860, 7960))
        for port in ports:
            try:
                return host, port, serve(host, port)
            except OSError:
                continue
        raise OSError(f"Cannot find empty port in range: {ports[0]}-{ports[-1]}.")

    def announce(self, host, port):
        if self.args.nowebui:
            say(f"Startup time: {time.time() - T0:.1f}s (stand-in UI).")
            say(f"INFO:     Uvicorn running on http://{host}:{port} (Press CTRL+C to quit)")
        else:
            say(f"Running on local URL:  http://{host}:{port}")
            say("\nTo create a public link, set `share=True` in `launch()`.")
            say(f"Startup time: {time.time() - T0:.1f}s (stand-in UI).")


LOST_SIGINTS = [int(os.environ.get("STANDIN_LOSE_FIRST_SIGINT", "0") == "1")]


def forge_sigint(signum, frame):
    if LOST_SIGINTS[0] > 0:  # lands inside `from torch._C import *`: nothing happens
        LOST_SIGINTS[0] -= 1
        record("signal", signal="SIGINT", lost=True)
        return
    record("signal", signal="SIGINT")
    os.write(1, f"Interrupted with signal {signum} in {frame}\n".encode())
    deliberate_exit(0, "SIGINT")


# ---------------------------------------------------------------------------------------
# ComfyUI

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
PT_EXTENSIONS = (".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft")
COMFY_MODEL_FOLDERS = {  # folder_paths.py: key -> folders under <base>/models
    "checkpoints": ["checkpoints"], "configs": ["configs"], "loras": ["loras"], "vae": ["vae"],
    "text_encoders": ["text_encoders", "clip"], "diffusion_models": ["unet", "diffusion_models"],
    "clip_vision": ["clip_vision"], "style_models": ["style_models"], "embeddings": ["embeddings"],
    "diffusers": ["diffusers"], "vae_approx": ["vae_approx"], "controlnet": ["controlnet", "t2i_adapter"],
    "gligen": ["gligen"], "upscale_models": ["upscale_models"], "hypernetworks": ["hypernetworks"],
    "photomaker": ["photomaker"], "classifiers": ["classifiers"], "model_patches": ["model_patches"],
    "audio_encoders": ["audio_encoders"],
}


def millis():
    return int(time.time() * 1000)


class WebSocket:
    """Server side of one RFC 6455 connection: unmasked text frames out, any frames in."""

    def __init__(self, handler):
        self.sock, self.rfile = handler.connection, handler.rfile
        self.lock = threading.Lock()

    def send_frame(self, opcode, payload):
        length = len(payload)
        if length < 126:
            header = struct.pack("!BB", 0x80 | opcode, length)
        elif length < 65536:
            header = struct.pack("!BBH", 0x80 | opcode, 126, length)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 127, length)
        with self.lock:
            try:
                self.sock.sendall(header + payload)
            except OSError:
                pass

    def send_json(self, obj):
        if not HUNG.is_set():
            self.send_frame(0x1, json.dumps(obj).encode())

    def read_frame(self):
        head = self.rfile.read(2)
        if len(head) < 2:
            return None, b""
        length = head[1] & 0x7F
        if length == 126:
            length = struct.unpack("!H", self.rfile.read(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", self.rfile.read(8))[0]
        mask = self.rfile.read(4) if head[1] & 0x80 else b""
        data = self.rfile.read(length)
        if mask:
            data = bytes(byte ^ mask[i % 4] for i, byte in enumerate(data))
        return head[0] & 0x0F, data


class ComfyApp:
    def __init__(self, args):
        self.args = args
        self.base = os.path.abspath(args.base_directory or os.getcwd())
        os.listdir(os.path.join(self.base, "custom_nodes"))  # prestartup scripts: dies without it
        self.temp_dir = os.path.join(args.temp_directory or self.base, "temp")
        self.output_dir = args.output_directory or os.path.join(self.base, "output")
        self.input_dir = args.input_directory or os.path.join(self.base, "input")
        self.counters = {}
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        for path in (args.input_directory or os.path.join(self.base, "input"), self.temp_dir,
                     args.user_directory or os.path.join(self.base, "user")):
            os.makedirs(path, exist_ok=True)
        self.cond = threading.Condition()
        self.pending = []  # queue items [number, prompt_id, prompt, extra_data, outputs]
        self.running = None  # (item, stop event)
        self.free_flags = {}  # /free's flags, acted on after the running prompt
        self.seconds = {}
        self.history = collections.OrderedDict()
        self.number = 0
        self.sockets = {}  # sid -> WebSocket
        threading.Thread(target=self.worker, name="prompt_worker", daemon=True).start()

    def method_not_allowed(self):
        return aiohttp_text("405: Method Not Allowed", 405)

    def route(self, method, path, query, body, handler):
        if path.startswith("/api/"):
            path = path[4:]
        table = {
            "/": {"GET": lambda: Reply(200, INDEX_HTML.encode(), "text/html")},
            "/ws": {"GET": lambda: self.websocket(query, handler)},
            "/system_stats": {"GET": self.system_stats},
            "/prompt": {"GET": lambda: aiohttp_json(self.queue_info()), "POST": lambda: self.submit(body)},
            "/queue": {"GET": self.get_queue, "POST": lambda: self.edit_queue(body)},
            "/interrupt": {"POST": lambda: self.interrupt(body)},
            "/free": {"POST": lambda: self.free(body)},
            "/history": {"GET": lambda: self.get_history(query), "POST": lambda: self.edit_history(body)},
            "/models": {"GET": lambda: aiohttp_json(list(COMFY_MODEL_FOLDERS))},
            "/view": {"GET": lambda: self.view(query)},
        }
        if path.startswith("/history/") and method == "GET":
            with self.cond:
                item = self.history.get(path[len("/history/"):])
                return aiohttp_json({path[len("/history/"):]: item} if item else {})
        if path.startswith("/models/") and method == "GET":
            return self.list_models(path[len("/models/"):])
        fn = route_table(self, table, method, path)
        if fn is None:
            return aiohttp_text("404: Not Found", 404)
        return fn()

    # -- status and WebSocket --------------------------------------------------------
    def queue_info(self):
        with self.cond:
            return {"exec_info": {"queue_remaining": len(self.pending) + (1 if self.running else 0)}}

    def send(self, event, data, sid=None):
        """server.send_sync: to one client, or to all when sid is None."""
        targets = list(self.sockets.values()) if sid is None else [self.sockets[sid]] if sid in self.sockets else []
        for ws in targets:
            ws.send_json({"type": event, "data": data})

    def queue_updated(self):
        self.send("status", {"status": self.queue_info()})

    def websocket(self, query, handler):
        key = handler.headers.get("Sec-WebSocket-Key")
        if handler.headers.get("Upgrade", "").lower() != "websocket" or not key:
            return aiohttp_text("400: Bad Request", 400)
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        handler.send_response(101, "Switching Protocols")
        handler.send_header("Upgrade", "websocket")
        handler.send_header("Connection", "Upgrade")
        handler.send_header("Sec-WebSocket-Accept", accept)
        handler.end_headers()
        handler.close_connection = True
        ws = WebSocket(handler)
        sid = query.get("clientId") or uuid.uuid4().hex
        self.sockets[sid] = ws
        try:
            ws.send_json({"type": "status", "data": {"status": self.queue_info(), "sid": sid}})
            while True:
                opcode, data = ws.read_frame()
                if opcode is None or opcode == 0x8:
                    ws.send_frame(0x8, data[:2])
                    break
                if opcode == 0x9:
                    ws.send_frame(0xA, data)
        except OSError:
            pass
        finally:
            if self.sockets.get(sid) is ws:
                del self.sockets[sid]
        return None

    # -- routes ----------------------------------------------------------------------
    def system_stats(self):
        page = os.sysconf("SC_PAGE_SIZE")
        total, free = os.sysconf("SC_PHYS_PAGES") * page, os.sysconf("SC_AVPHYS_PAGES") * page
        return aiohttp_json({
            "system": {"os": os.name, "ram_total": total, "ram_free": free, "comfyui_version": "0.3.64",
                       "required_frontend_version": "1.27.10", "installed_templates_version": "0.1.95",
                       "required_templates_version": "0.1.95", "python_version": sys.version,
                       "pytorch_version": "stand-in", "embedded_python": False, "argv": sys.argv},
            "devices": [{"name": "cpu", "type": "cpu", "index": None, "vram_total": total, "vram_free": free,
                         "torch_vram_total": total, "torch_vram_free": free}]})

    def submit(self, body):
        prompt = (body or {}).get("prompt") if isinstance(body, dict) else None
        if prompt is None:
            error = {"type": "no_prompt", "message": "No prompt provided", "details": "No prompt provided",
                     "extra_info": {}}
            return aiohttp_json({"error": error, "node_errors": {}}, 400)
        bad = [node_id for node_id, node in (prompt.items() if isinstance(prompt, dict) else [("?", None)])
               if not isinstance(node, dict) or "class_type" not in node]
        if bad:
            error = {"type": "invalid_prompt", "message": "Cannot execute because a node is missing the "
                     "class_type property.", "details": f"Node ID '#{bad[0]}'", "extra_info": {}}
            return aiohttp_json({"error": error, "node_errors": {}}, 400)
        extra_data = dict(body.get("extra_data") or {})
        if "client_id" in body:
            extra_data["client_id"] = body["client_id"]
        prompt_id = str(body.get("prompt_id") or uuid.uuid4())
        # the stand-in knows no node classes: Save*/Preview* nodes count as outputs
        outputs = [node_id for node_id, node in prompt.items()
                   if str(node["class_type"]).startswith(("Save", "Preview"))]
        if not outputs:
            error = {"type": "prompt_no_outputs", "message": "Prompt has no outputs", "details": "",
                     "extra_info": {}}
            return aiohttp_json({"error": error, "node_errors": []}, 400)
        seconds = float(body.get("stand_in_seconds", extra_data.get("stand_in_seconds", JOB_SECONDS)))
        with self.cond:
            if "number" in body:
                number = float(body["number"])
            else:
                number = -self.number if body.get("front") else self.number
                self.number += 1
            self.pending.append([number, prompt_id, prompt, extra_data, outputs])
            self.seconds[prompt_id] = seconds
            self.cond.notify()
        say("got prompt")
        self.queue_updated()
        return aiohttp_json({"prompt_id": prompt_id, "number": number, "node_errors": {}})

    def get_queue(self):
        with self.cond:
            running = [self.running[0]] if self.running else []
            return aiohttp_json({"queue_running": running, "queue_pending": sorted(self.pending, key=lambda i: i[0])})

    def edit_queue(self, body):
        body = body if isinstance(body, dict) else {}
        with self.cond:
            if body.get("clear"):
                self.pending.clear()
            doomed = set(body.get("delete") or [])
            self.pending = [item for item in self.pending if item[1] not in doomed]
        self.queue_updated()
        return Reply(200, b"", "application/octet-stream")

    def interrupt(self, body):
        wanted = body.get("prompt_id") if isinstance(body, dict) else None
        with self.cond:
            if self.running and wanted in (None, self.running[0][1]):
                self.running[1].set()
        return Reply(200, b"", "application/octet-stream")

    def free(self, body):
        """server.py post_free: sets the prompt queue's flags, which the worker acts on
        after the running prompt (at once when idle): unload_models (also implied by
        free_memory) unloads every model; recorded as "free" then. A body that is not
        a JSON object fails like aiohttp's request.json() / .get() do: 500."""
        if not isinstance(body, dict):
            return Reply(500, b"500 Internal Server Error\n\nServer got itself in trouble",
                         "text/plain; charset=utf-8")
        flags = {k: True for k in ("unload_models", "free_memory") if body.get(k)}
        if flags:
            with self.cond:
                self.free_flags.update(flags)
                if self.running is None:
                    self.apply_free_flags()
        return Reply(200, b"", "application/octet-stream")

    def apply_free_flags(self):
        """Under self.cond: main.py prompt_worker's handling of the flags."""
        if self.free_flags:
            record("free", **self.free_flags)
            self.free_flags = {}

    def get_history(self, query):
        with self.cond:
            items = list(self.history.items())
        if "max_items" in query:
            items = items[-int(query["max_items"]):] if int(query["max_items"]) > 0 else []
        return aiohttp_json(dict(items))

    def edit_history(self, body):
        body = body if isinstance(body, dict) else {}
        with self.cond:
            if body.get("clear"):
                self.history.clear()
            for prompt_id in body.get("delete") or []:
                self.history.pop(prompt_id, None)
        return Reply(200, b"", "application/octet-stream")

    def list_models(self, key):
        if key not in COMFY_MODEL_FOLDERS:
            return aiohttp_text("404: Not Found", 404)
        extensions = (".yaml",) if key == "configs" else PT_EXTENSIONS
        names = set()
        for folder in COMFY_MODEL_FOLDERS[key]:
            root = os.path.join(self.base, "models", folder)
            for dirpath, _, files in os.walk(root, followlinks=True):
                for name in files:
                    path = os.path.join(dirpath, name)
                    if name.lower().endswith(extensions) and os.path.isfile(path):
                        names.add(os.path.relpath(path, root).replace(os.sep, "/"))
        return aiohttp_json(sorted(names))

    # -- the prompt worker -----------------------------------------------------------
    def worker(self):
        while True:
            with self.cond:
                while not self.pending:
                    self.cond.wait()
                self.pending.sort(key=lambda i: i[0])
                item, stop = self.pending.pop(0), threading.Event()
                self.running = (item, stop)
                seconds = self.seconds.pop(item[1], JOB_SECONDS)
            self.queue_updated()
            prompt_id, client = item[1], item[3].get("client_id")
            messages = [["execution_start", {"prompt_id": prompt_id, "timestamp": millis()}]]
            if client is not None:
                self.send(*messages[0], client)
            record("job_start", id=prompt_id, kind="prompt")
            started = time.time()
            node = item[4][0]  # like the real worker, one node at a time: here the output node

            def on_step(i, steps, prompt_id=prompt_id, client=client, node=node):
                # main.py hijack_progress: to the prompt's client, to all without one
                self.send("progress", {"value": i, "max": steps, "prompt_id": prompt_id, "node": node}, client)

            if client is not None:  # execution.py: only to the prompt's own client
                self.send("executing", {"node": node, "display_node": node, "prompt_id": prompt_id}, client)
            # comfy_execution/progress.py: each node's start and end, to the prompt's client
            # or, without one, to every socket
            self.send("progress_state", {"prompt_id": prompt_id, "nodes": {node: {
                "value": 0.0, "max": 1.0, "state": "running", "node_id": node, "prompt_id": prompt_id,
                "display_node_id": node, "parent_node_id": None, "real_node_id": node}}}, client)
            completed = run_job(stop, seconds, on_step)
            error = image_error() if completed else None
            record("job_end", id=prompt_id, kind="prompt", completed=completed and not error)
            outputs = {}
            if error:
                failed = next(iter(item[4]))
                messages.append(["execution_error", {
                    "prompt_id": prompt_id, "node_id": failed, "node_type": item[2][failed]["class_type"],
                    "executed": [], "exception_message": error + "\n", "exception_type": "RuntimeError",
                    "traceback": ["  File \"stand_in_ui.py\", in worker\n"], "current_inputs": {},
                    "current_outputs": {}, "timestamp": millis()}])
                if client is not None:
                    self.send(*messages[-1], client)
                say("!!! Exception during processing !!! " + error)
            elif completed:
                outputs = self.save_outputs(item)
                messages.append(["execution_success", {"prompt_id": prompt_id, "timestamp": millis()}])
                if client is not None:
                    self.send(*messages[-1], client)
                say(f"Prompt executed in {time.time() - started:.2f} seconds")
            else:
                messages.append(["execution_interrupted", {"prompt_id": prompt_id, "node_id": None,
                                                           "node_type": None, "executed": [],
                                                           "timestamp": millis()}])
                self.send(*messages[-1])
                say("Processing interrupted")
            ok = completed and not error
            status = {"status_str": "success" if ok else "error", "completed": ok, "messages": messages}
            meta = {node: {"node_id": node, "display_node": node, "parent_node": None, "real_node_id": node}
                    for node in outputs}
            with self.cond:
                self.history[prompt_id] = {"prompt": item, "outputs": outputs, "status": status, "meta": meta}
                self.running = None
                self.apply_free_flags()
            self.queue_updated()
            if client is not None:
                self.send("executing", {"node": None, "prompt_id": prompt_id}, client)

    def save_outputs(self, item):
        """SaveImage writes <prefix>_00001_.png into output/, PreviewImage into temp/."""
        outputs = {}
        for node_id in item[4]:
            node = item[2][node_id]
            saved = str(node["class_type"]) == "SaveImage"
            prefix = str(node.get("inputs", {}).get("filename_prefix") or "ComfyUI") if saved else "ComfyUI_temp"
            folder = self.output_dir if saved else self.temp_dir
            subfolder = os.path.dirname(prefix)
            os.makedirs(os.path.join(folder, subfolder), exist_ok=True)
            with self.cond:
                number = self.counters[prefix] = self.counters.get(prefix, 0) + 1
            filename = f"{os.path.basename(prefix)}_{number:05}_.png"
            with open(os.path.join(folder, subfolder, filename), "wb") as file:
                file.write(base64.b64decode(TINY_PNG))
            outputs[node_id] = {"images": [{"filename": filename, "subfolder": subfolder,
                                            "type": "output" if saved else "temp"}]}
        return outputs

    def view(self, query):
        """GET /view?filename=&subfolder=&type=: the file's bytes (server.py view_image)."""
        name = query.get("filename", "")
        if not name or name.startswith("/") or ".." in name:
            return aiohttp_text("400: Bad Request", 400)
        root = {"output": self.output_dir, "temp": self.temp_dir}.get(query.get("type", "output"), self.input_dir)
        path = os.path.abspath(os.path.join(root, query.get("subfolder", ""), name))
        if os.path.commonpath((os.path.abspath(root), path)) != os.path.abspath(root) or not os.path.isfile(path):
            return aiohttp_text("404: Not Found", 404)
        with open(path, "rb") as file:
            data = file.read()
        return Reply(200, data, "image/png", {"Content-Disposition": f'filename="{name}"'})

    # -- lifecycle -------------------------------------------------------------------
    def start_listening(self):
        host = self.args.listen.split(",")[0]
        return host, self.args.port, serve(host, self.args.port)

    def announce(self, host, port):
        if not self.args.dont_print_server:
            say("Starting server\n")
            say("To see the GUI go to: http://{}:{}".format(f"[{host}]" if ":" in host else host, port))

    def stop(self):
        say("\nStopped server")
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        deliberate_exit(0, "SIGINT")


def comfy_sigint(signum, frame):
    if LOST_SIGINTS[0] > 0:
        LOST_SIGINTS[0] -= 1
        record("signal", signal="SIGINT", lost=True)
        return
    record("signal", signal="SIGINT")
    raise KeyboardInterrupt


INDEX_HTML = f"<!doctype html><title>stand-in UI</title><p>sd-webui-supervisor stand-in UI ({FLAVOR}): not a real UI.\n"

# ---------------------------------------------------------------------------------------
# Signals and main


def die_by_default(signum, frame):
    """Record the signal, then let its default action end the process (status -signum)."""
    record("signal", signal=signal.Signals(signum).name)
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def install_signal_handlers():
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) != signal.SIG_IGN:  # an inherited SIG_IGN stays, as in Python
            signal.signal(signum, die_by_default)
    if os.environ.get("STANDIN_IGNORE_SIGINT") == "1":
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    elif not COMFY:
        signal.signal(signal.SIGINT, forge_sigint)  # initialize_util.configure_sigint_handler
    elif signal.getsignal(signal.SIGINT) != signal.SIG_IGN:
        signal.signal(signal.SIGINT, comfy_sigint)  # else: inherited SIG_IGN, SIGINT does nothing


def start_timers():
    """STANDIN_CRASH_AFTER and STANDIN_HANG_AFTER, both counted from process start."""
    def crash(code=int(env_float("STANDIN_EXIT_CODE", 1))):
        say(f"stand-in: STANDIN_CRASH_AFTER reached, exiting with code {code}", sys.stderr)
        deliberate_exit(code, "STANDIN_CRASH_AFTER")

    def hang():
        HUNG.set()
        say("stand-in: STANDIN_HANG_AFTER reached, no longer answering", sys.stderr)

    for variable, action in (("STANDIN_CRASH_AFTER", crash), ("STANDIN_HANG_AFTER", hang)):
        after = env_float(variable)
        if after is not None:
            timer = threading.Timer(max(0.0, T0 + after - time.time()), action)
            timer.daemon = True
            timer.start()


GIT_MESSAGE = """Traceback (most recent call last):
  File "launch.py", line 54, in <module>
    main()
  File "modules/launch_utils.py", line 543, in start
    import webui
  File "git/__init__.py", line 296, in <module>
    refresh()
  File "git/cmd.py", line 448, in refresh
    raise ImportError(err)
ImportError: Bad git executable.
The git executable must be specified in one of the following ways:
    - be included in your $PATH
    - be set via $GIT_PYTHON_GIT_EXECUTABLE
    - explicitly set via git.refresh(<full-path-to-git-executable>)

All git commands will error until this is rectified.

This initial message can be silenced or aggravated in the future by setting the
$GIT_PYTHON_REFRESH environment variable. Use one of the following values:
    - quiet|q|silence|s|silent|none|n|0: for no message or exception
    - warn|w|warning|log|l|1: for a warning message (logging level CRITICAL, displayed by default)
    - error|e|exception|raise|r|2: for a raised exception

Example:
    export GIT_PYTHON_REFRESH=quiet
"""


def check_git():
    """Forge/A1111 import GitPython at start, which raises ImportError without a git."""
    if COMFY or os.environ.get("GIT_PYTHON_GIT_EXECUTABLE") or shutil.which("git"):
        return
    if os.environ.get("GIT_PYTHON_REFRESH", "").lower() in ("quiet", "q", "silence", "s", "silent", "none",
                                                           "n", "0"):
        return
    print(GIT_MESSAGE, file=sys.stderr, end="", flush=True)
    deliberate_exit(1, "git")


def parse_args():
    argv = sys.argv[1:]
    parser = build_parser()
    try:
        if not COMFY and os.environ.get("IGNORE_CMD_ARGS_ERRORS"):
            return parser.parse_known_args(argv)[0]
        return parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a bad flag (2)
        record("exit", code=exc.code, reason="arguments")
        raise


def main():
    global ARGS, APP
    record("start", argv=sys.argv, flavor=FLAVOR, cwd=os.getcwd(),
           env={k: v for k, v in os.environ.items() if k.startswith(RECORD_ENV_PREFIXES)},
           sig_ignored=signal_set("SigIgn"), sig_blocked=signal_set("SigBlk"))
    if FLAVOR not in ("forge", "a1111", "comfyui"):
        print(f"stand-in: unknown STANDIN_FLAVOR {FLAVOR!r} (forge, a1111 or comfyui)", file=sys.stderr)
        deliberate_exit(2, "STANDIN_FLAVOR")
    install_signal_handlers()
    if not COMFY:  # modules/paths_internal.py, at import
        sys.argv += shlex.split(os.environ.get("COMMANDLINE_ARGS", ""))
    if os.environ.get("STANDIN_PRINT_ENV") == "1":
        for key, value in sorted(os.environ.items()):
            if key.startswith(RECORD_ENV_PREFIXES):
                print(f"{key}={value}", flush=True)
    ARGS = parse_args()
    start_timers()
    try:
        if not COMFY:
            say(f"Launching Web UI with arguments: {shlex.join(sys.argv[1:])}")
            check_git()
        try:
            APP = ComfyApp(ARGS) if COMFY else ForgeApp(ARGS)
            time.sleep(env_float("STANDIN_START_DELAY", 0.0))
            host, port, server = APP.start_listening()
        except Exception:
            record("exit", code=1, reason="startup error")
            raise
        record("listening", host=host, port=port)
        APP.announce(host, port)
        server.serve_forever()
    except KeyboardInterrupt:  # only ComfyUI gets here: Forge's handler exits at once
        if COMFY and APP:
            APP.stop()
        deliberate_exit(0, "SIGINT")


ARGS = APP = None

# captures/forge-options.json (GET /sdapi/v1/options on a fresh Forge data dir, 331 keys)
OPTIONS_JSON = (
    '{"samples_save":true,"samples_format":"png","samples_filename_pattern":"",'
    '"save_images_add_number":true,"save_images_replace_action":"Replace","grid_save":true,'
    '"grid_format":"png","grid_extended_filename":false,"grid_only_if_multiple":true,'
    '"grid_prevent_empty_spots":false,"grid_zip_filename_pattern":"","n_rows":-1.0,"font":"",'
    '"grid_text_active_color":"#000000","grid_text_inactive_color":"#999999",'
    '"grid_background_color":"#ffffff","save_images_before_face_restoration":false,'
    '"save_images_before_highres_fix":false,"save_images_before_color_correction":false,'
    '"save_mask":false,"save_mask_composite":false,"jpeg_quality":80.0,"webp_lossless":false,'
    '"export_for_4chan":true,"img_downscale_threshold":4.0,"target_side_length":4000.0,'
    '"img_max_size_mp":200.0,"use_original_name_batch":true,"use_upscaler_name_as_suffix":false,'
    '"save_selected_only":true,"save_write_log_csv":true,"save_init_img":false,"temp_dir":"",'
    '"clean_temp_dir_at_start":false,"save_incomplete_images":false,"notification_audio":true,'
    '"notification_volume":100.0,"outdir_samples":"",'
    '"outdir_txt2img_samples":"/var/lib/sd-webui-forge/outputs/txt2img-images",'
    '"outdir_img2img_samples":"/var/lib/sd-webui-forge/outputs/img2img-images",'
    '"outdir_extras_samples":"/var/lib/sd-webui-forge/outputs/extras-images","outdir_grids":"",'
    '"outdir_txt2img_grids":"/var/lib/sd-webui-forge/outputs/txt2img-grids",'
    '"outdir_img2img_grids":"/var/lib/sd-webui-forge/outputs/img2img-grids",'
    '"outdir_save":"/var/lib/sd-webui-forge/log/images",'
    '"outdir_init_images":"/var/lib/sd-webui-forge/outputs/init-images","save_to_dirs":true,'
    '"grid_save_to_dirs":true,"use_save_to_dirs_for_ui":false,'
    '"directories_filename_pattern":"[date]","directories_max_prompt_words":8.0,'
    '"ESRGAN_tile":192.0,"ESRGAN_tile_overlap":8.0,'
    '"realesrgan_enabled_models":["R-ESRGAN 4x+","R-ESRGAN 4x+ Anime6B"],'
    '"dat_enabled_models":["DAT x2","DAT x3","DAT x4"],"DAT_tile":192.0,"DAT_tile_overlap":8.0,'
    '"upscaler_for_img2img":null,"set_scale_by_when_changing_upscaler":false,'
    '"face_restoration":false,"face_restoration_model":"CodeFormer","code_former_weight":0.5,'
    '"face_restoration_unload":false,"auto_launch_browser":"Local",'
    '"enable_console_prompts":false,"show_warnings":false,'
    '"show_gradio_deprecation_warnings":true,"memmon_poll_rate":8.0,"samples_log_stdout":false,'
    '"multiple_tqdm":true,"enable_upscale_progressbar":true,"print_hypernet_extra":false,'
    '"list_hidden_files":true,"disable_mmap_load_safetensors":false,"hide_ldm_prints":true,'
    '"dump_stacks_on_signal":false,'
    '"profiling_explanation":"Those settings allow you to enable torch profiler when generating pictures.\\nProfiling allows you to see which code uses how much of computer\'s resources during generation.\\nEach generation writes its own profile to one file, overwriting previous.\\nThe file can be viewed in <a href=\\"chrome:tracing\\">Chrome</a>, or on a <a href=\\"https://ui.perfetto.dev/\\">Perfetto</a> web site.\\nWarning: writing profile can take a lot of time, up to 30 seconds, and the file itelf can be around 500MB in size.",'
    '"profiling_enable":false,"profiling_activities":["CPU"],"profiling_record_shapes":true,'
    '"profiling_profile_memory":true,"profiling_with_stack":true,'
    '"profiling_filename":"trace.json","api_enable_requests":true,'
    '"api_forbid_local_requests":true,"api_useragent":"","unload_models_when_training":false,'
    '"pin_memory":false,"save_optimizer_state":false,"save_training_settings_to_txt":true,'
    '"dataset_filename_word_regex":"","dataset_filename_join_string":" ",'
    '"training_image_repeats_per_epoch":1.0,"training_write_csv_every":500.0,'
    '"training_xattention_optimizations":false,"training_enable_tensorboard":false,'
    '"training_tensorboard_save_images":false,"training_tensorboard_flush_every":120.0,'
    '"sd_model_checkpoint":null,"sd_checkpoints_limit":1.0,"sd_checkpoints_keep_in_cpu":true,'
    '"sd_checkpoint_cache":0,"sd_unet":"Automatic","enable_quantization":false,'
    '"emphasis":"Original","enable_batch_seeds":true,"comma_padding_backtrack":20.0,'
    '"sdxl_clip_l_skip":false,"CLIP_stop_at_last_layers":2.0,"upcast_attn":false,'
    '"randn_source":"GPU","tiling":false,"hires_fix_refiner_pass":"second pass",'
    '"sdxl_crop_top":0,"sdxl_crop_left":0,"sdxl_refiner_low_aesthetic_score":2.5,'
    '"sdxl_refiner_high_aesthetic_score":6.0,"sd3_enable_t5":false,'
    '"sd_vae_explanation":"<abbr title=\'Variational autoencoder\'>VAE</abbr> is a neural network that transforms a standard <abbr title=\'red/green/blue\'>RGB</abbr>\\nimage into latent space representation and back. Latent space representation is what stable diffusion is working on during sampling\\n(i.e. when the progress bar is between empty and full). For txt2img, VAE is used to create a resulting image after the sampling is finished.\\nFor img2img, VAE is used to process user\'s input image before the sampling, and to create an image after sampling.",'
    '"sd_vae_checkpoint_cache":0,"sd_vae":"Automatic",'
    '"sd_vae_overrides_per_model_preferences":true,"auto_vae_precision_bfloat16":false,'
    '"auto_vae_precision":true,"sd_vae_encode_method":"Full","sd_vae_decode_method":"Full",'
    '"inpainting_mask_weight":1.0,"initial_noise_multiplier":1.0,"img2img_extra_noise":0.0,'
    '"img2img_color_correction":false,"img2img_fix_steps":false,'
    '"img2img_background_color":"#ffffff","img2img_sketch_default_brush_color":"#ffffff",'
    '"img2img_inpaint_mask_brush_color":"#ffffff",'
    '"img2img_inpaint_sketch_default_brush_color":"#ffffff",'
    '"img2img_inpaint_mask_high_contrast":true,"img2img_inpaint_mask_scribble_alpha":75.0,'
    '"return_mask":false,"return_mask_composite":false,"img2img_batch_show_results_limit":32.0,'
    '"overlay_inpaint":true,"img2img_autosize":false,"img2img_batch_use_original_name":false,'
    '"cross_attention_optimization":"Automatic","s_min_uncond":0.0,"s_min_uncond_all":false,'
    '"token_merging_ratio":0.0,"token_merging_ratio_img2img":0.0,"token_merging_ratio_hr":0.0,'
    '"pad_cond_uncond":false,"pad_cond_uncond_v0":false,"persistent_cond_cache":true,'
    '"batch_cond_uncond":true,"fp8_storage":"Disable","cache_fp16_weight":false,'
    '"forge_try_reproduce":"None","auto_backcompat":true,"use_old_emphasis_implementation":false,'
    '"use_old_karras_scheduler_sigmas":false,"no_dpmpp_sde_batch_determinism":false,'
    '"use_old_hires_fix_width_height":false,"hires_fix_use_firstpass_conds":false,'
    '"use_old_scheduling":false,"use_downcasted_alpha_bar":false,'
    '"refiner_switch_by_sample_steps":false,"interrogate_keep_models_in_memory":false,'
    '"interrogate_return_ranks":false,"interrogate_clip_num_beams":1.0,'
    '"interrogate_clip_min_length":24.0,"interrogate_clip_max_length":48.0,'
    '"interrogate_clip_dict_limit":1500.0,"interrogate_clip_skip_categories":[],'
    '"interrogate_deepbooru_score_threshold":0.5,"deepbooru_sort_alpha":true,'
    '"deepbooru_use_spaces":true,"deepbooru_escape":true,"deepbooru_filter_tags":"",'
    '"extra_networks_show_hidden_directories":true,"extra_networks_dir_button_function":false,'
    '"extra_networks_hidden_models":"When searched","extra_networks_default_multiplier":1.0,'
    '"extra_networks_card_width":0,"extra_networks_card_height":0,'
    '"extra_networks_card_text_scale":1.0,"extra_networks_card_show_desc":true,'
    '"extra_networks_card_description_is_html":false,"extra_networks_card_order_field":"Path",'
    '"extra_networks_card_order":"Ascending","extra_networks_tree_view_style":"Dirs",'
    '"extra_networks_tree_view_default_enabled":true,'
    '"extra_networks_tree_view_default_width":180.0,"extra_networks_add_text_separator":" ",'
    '"ui_extra_networks_tab_reorder":"","textual_inversion_print_at_load":false,'
    '"textual_inversion_add_hashes_to_infotext":true,"sd_hypernetwork":"None",'
    '"keyedit_precision_attention":0.1,"keyedit_precision_extra":0.05,'
    '"keyedit_delimiters":".,\\\\/!?%^*;:{}=`~() ",'
    '"keyedit_delimiters_whitespace":["Tab","Carriage Return","Line Feed"],"keyedit_move":true,'
    '"disable_token_counters":false,"include_styles_into_token_counters":true,"return_grid":true,'
    '"do_not_show_images":false,"js_modal_lightbox":true,'
    '"js_modal_lightbox_initially_zoomed":true,"js_modal_lightbox_gamepad":false,'
    '"js_modal_lightbox_gamepad_repeat":250.0,"sd_webui_modal_lightbox_icon_opacity":1.0,'
    '"sd_webui_modal_lightbox_toolbar_opacity":0.9,"gallery_height":"",'
    '"open_dir_button_choice":"Subdirectory","hires_button_gallery_insert":false,'
    '"compact_prompt_box":false,"samplers_in_dropdown":true,"dimensions_and_batch_together":true,'
    '"sd_checkpoint_dropdown_use_short":false,"hires_fix_show_sampler":false,'
    '"hires_fix_show_prompts":false,"txt2img_settings_accordion":false,'
    '"img2img_settings_accordion":false,"interrupt_after_current":true,"localization":"None",'
    '"quick_setting_list":[],"ui_tab_order":[],"hidden_tabs":[],'
    '"tabs_without_quick_settings_bar":["Spaces"],"ui_reorder_list":[],"gradio_theme":"Default",'
    '"gradio_themes_cache":true,"show_progress_in_title":true,"send_seed":true,"send_size":true,'
    '"enable_reloading_ui_scripts":false,'
    '"infotext_explanation":"Infotext is what this software calls the text that contains generation parameters and can be used to generate the same picture again.\\nIt is displayed in UI below the image. To use infotext, paste it into the prompt and click the ↙️ paste button.",'
    '"enable_pnginfo":true,"stealth_pnginfo_option":"Alpha","save_txt":false,'
    '"add_model_name_to_info":true,"add_model_hash_to_info":true,"add_vae_name_to_info":true,'
    '"add_vae_hash_to_info":true,"add_user_name_to_info":false,"add_version_to_infotext":true,'
    '"disable_weights_auto_swap":true,"infotext_skip_pasting":[],'
    '"infotext_styles":"Apply if any","show_progressbar":true,"live_previews_enable":true,'
    '"live_previews_image_format":"png","show_progress_grid":true,'
    '"show_progress_every_n_steps":10.0,"show_progress_type":"Approx NN",'
    '"live_preview_allow_lowvram_full":false,"live_preview_content":"Prompt",'
    '"live_preview_refresh_period":1000.0,"live_preview_fast_interrupt":false,'
    '"js_live_preview_in_modal_lightbox":false,"prevent_screen_sleep_during_generation":true,'
    '"hide_samplers":[],"eta_ddim":0.0,"eta_ancestral":1.0,"ddim_discretize":"uniform",'
    '"s_churn":0.0,"s_tmin":0.0,"s_tmax":0.0,"s_noise":1.0,"sigma_min":0.0,"sigma_max":0.0,'
    '"rho":0.0,"eta_noise_seed_delta":0,"always_discard_next_to_last_sigma":false,'
    '"sgm_noise_multiplier":false,"uni_pc_variant":"bh1","uni_pc_skip_type":"time_uniform",'
    '"uni_pc_order":3.0,"uni_pc_lower_order_final":true,"sd_noise_schedule":"Default",'
    '"skip_early_cond":0.0,"beta_dist_alpha":0.6,"beta_dist_beta":0.6,'
    '"postprocessing_enable_in_main_ui":[],"postprocessing_disable_in_extras":[],'
    '"postprocessing_operation_order":[],"upscaling_max_images_in_cache":5.0,'
    '"postprocessing_existing_caption_action":"Ignore","disabled_extensions":[],'
    '"disable_all_extensions":"none","restore_config_state_file":"","sd_checkpoint_hash":"",'
    '"forge_unet_storage_dtype":"Automatic","forge_inference_memory":1024.0,'
    '"forge_async_loading":"Queue","forge_pin_shared_memory":"CPU","forge_preset":"sd",'
    '"forge_additional_modules":[],"forge_canvas_plain":false,'
    '"forge_canvas_toolbar_always":false,"enable_prompt_comments":true,"sd_t2i_width":512.0,'
    '"sd_t2i_height":640.0,"sd_t2i_cfg":7.0,"sd_t2i_hr_cfg":7.0,"sd_i2i_width":512.0,'
    '"sd_i2i_height":512.0,"sd_i2i_cfg":7.0,"xl_t2i_width":896.0,"xl_t2i_height":1152.0,'
    '"xl_t2i_cfg":5.0,"xl_t2i_hr_cfg":5.0,"xl_i2i_width":1024.0,"xl_i2i_height":1024.0,'
    '"xl_i2i_cfg":5.0,"xl_GPU_MB":23081.0,"flux_t2i_width":896.0,"flux_t2i_height":1152.0,'
    '"flux_t2i_cfg":1.0,"flux_t2i_hr_cfg":1.0,"flux_t2i_d_cfg":3.5,"flux_t2i_hr_d_cfg":3.5,'
    '"flux_i2i_width":1024.0,"flux_i2i_height":1024.0,"flux_i2i_cfg":1.0,"flux_i2i_d_cfg":3.5,'
    '"flux_GPU_MB":23081.0,'
    '"settings_in_ui":"This page allows you to add some settings to the main interface of txt2img and img2img tabs.",'
    '"extra_options_txt2img":[],"extra_options_img2img":[],"extra_options_cols":1.0,'
    '"extra_options_accordion":false}'
)

if __name__ == "__main__":
    main()
