"""Tests of examples/stand_in_ui.py, the stand-in UI used by sd-webui-supervisor's tests.

Run from the repository root: python3 -m unittest discover -s tests/stand_in -v
Standard library only. Every test starts its own stand-in on a free loopback port, waits
with timeouts only, and kills what it started.
"""

import base64
import hashlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "examples", "stand_in_ui.py")

IDLE_PROGRESS = {  # captures/forge-progress-idle.json
    "progress": 0.0, "eta_relative": 0.0,
    "state": {"skipped": False, "interrupted": False, "stopping_generation": False, "job": "", "job_count": 0,
              "job_timestamp": "0", "job_no": 0, "sampling_step": 0, "sampling_steps": 0},
    "current_image": None, "textinfo": None}
SYSTEM_KEYS = {"os", "ram_total", "ram_free", "comfyui_version", "required_frontend_version",
               "installed_templates_version", "required_templates_version", "python_version",
               "pytorch_version", "embedded_python", "argv"}  # captures/comfyui-system-stats.json
DEVICE_KEYS = {"name", "type", "index", "vram_total", "vram_free", "torch_vram_total", "torch_vram_free"}


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout=5.0, interval=0.02, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def child_signals(ignore_sigint=False):
    """preexec_fn: start the child with default signals (or SIGINT ignored), whatever we inherited."""
    def reset():
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)
        if ignore_sigint:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
    return reset


class StandIn:
    """One stand-in process on a free port, with its output files and record."""

    def __init__(self, tmp, flavor, args, env, ignore_sigint=False, port=None):
        self.flavor, self.port = flavor, port or free_port()
        self.record_path = os.path.join(tmp, "record.jsonl")
        self.out_path, self.err_path = os.path.join(tmp, f"out-{self.port}.txt"), os.path.join(tmp, f"err-{self.port}.txt")
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("STANDIN_") and k != "COMMANDLINE_ARGS"}
        full_env.update(STANDIN_FLAVOR=flavor, STANDIN_RECORD=self.record_path, **env)
        self.argv = [SCRIPT] + [a.replace("{port}", str(self.port)) for a in args]
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.started = time.time()
            self.proc = subprocess.Popen([sys.executable] + self.argv, env=full_env, cwd=tmp, stdout=out,
                                         stderr=err, stdin=subprocess.DEVNULL,
                                         preexec_fn=child_signals(ignore_sigint))

    def request(self, method, path, body=None, timeout=5.0):
        """(status, parsed JSON or text) for one HTTP request."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status, ctype, raw = resp.status, resp.headers.get("Content-Type", ""), resp.read()
        except urllib.error.HTTPError as err:
            status, ctype, raw = err.code, err.headers.get("Content-Type", ""), err.read()
        return status, json.loads(raw) if "json" in ctype else raw.decode()

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.request("POST", path, body, **kw)

    def ready(self):
        path = "/system_stats" if self.flavor == "comfyui" else "/internal/ping"
        try:
            return self.get(path, timeout=1)[0] == 200
        except OSError:
            if self.proc.poll() is not None:
                raise AssertionError(f"stand-in exited with {self.proc.returncode}: {self.stderr()}")
            return False

    def wait_ready(self, timeout=10):
        wait_until(self.ready, timeout, what="the stand-in to answer")
        return self

    def wait_exit(self, timeout=5):
        return self.proc.wait(timeout)

    def records(self, pid=None):
        try:
            with open(self.record_path) as file:
                rows = [json.loads(line) for line in file]
        except FileNotFoundError:
            return []
        return [r for r in rows if pid is None or r["pid"] == pid]

    def events(self, event):
        return [r for r in self.records(self.proc.pid) if r["event"] == event]

    def stdout(self):
        with open(self.out_path) as file:
            return file.read()

    def stderr(self):
        with open(self.err_path) as file:
            return file.read()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)


class WsClient:
    """A tiny RFC 6455 client: masked frames out, unmasked frames in."""

    def __init__(self, port, path="/ws"):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise AssertionError("connection closed during the handshake")
            self.buffer += chunk
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode().split("\r\n")
        self.status_line = lines[0]
        self.headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        expected = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
        self.accept_ok = self.headers.get("sec-websocket-accept") == expected.decode()

    def _exact(self, n):
        while len(self.buffer) < n:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise EOFError("closed")
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def recv(self, timeout=5.0):
        self.sock.settimeout(timeout)
        b0, b1 = self._exact(2)
        assert not b1 & 0x80, "server frames must not be masked"
        length = b1 & 0x7F
        if length == 126:
            length = struct.unpack("!H", self._exact(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", self._exact(8))[0]
        return b0 & 0x0F, self._exact(length)

    def recv_json(self, timeout=5.0):
        while True:
            opcode, payload = self.recv(timeout)
            if opcode == 0x1:
                return json.loads(payload)

    def send(self, opcode, payload=b""):
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(struct.pack("!BB", 0x80 | opcode, 0x80 | len(payload)) + mask + masked)

    def close(self):
        self.sock.close()


class StandInCase(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory(prefix="stand-in-")
        self.tmp = self._tmp.name
        self.procs = []

    def tearDown(self):
        for proc in self.procs:
            proc.kill()
        self._tmp.cleanup()

    def start(self, flavor="forge", args=None, env=None, ready=True, ignore_sigint=False, subdir="data"):
        self.data = os.path.join(self.tmp, subdir)
        if args is None and flavor == "comfyui":
            os.makedirs(os.path.join(self.data, "custom_nodes"), exist_ok=True)
            args = ["--base-directory", self.data, "--port", "{port}", "--listen", "127.0.0.1"]
        elif args is None:
            args = ["--api", "--skip-prepare-environment", "--skip-install", "--data-dir", self.data,
                    "--port", "{port}", "--server-name", "127.0.0.1"]
        proc = StandIn(self.tmp, flavor, args, env or {}, ignore_sigint)
        self.procs.append(proc)
        return proc.wait_ready() if ready else proc

    @staticmethod
    def read(path):
        with open(path) as file:
            return file.read()

    def run_to_exit(self, flavor, args, env=None, timeout=5):
        proc = self.start(flavor, args, env, ready=False)
        return proc.wait_exit(timeout), proc


class ForgeTests(StandInCase):
    def test_readiness_and_idle_shapes(self):
        ui = self.start()
        self.assertEqual(ui.get("/internal/ping"), (200, {}))
        self.assertEqual(ui.get("/internal/pending-tasks"), (200, {"size": 0, "tasks": []}))
        self.assertEqual(ui.get("/sdapi/v1/progress?skip_current_image=true"), (200, IDLE_PROGRESS))
        self.assertEqual(ui.get("/sdapi/v1/sd-models"), (200, []))
        self.assertEqual(ui.get("/no/such/route"), (404, {"detail": "Not Found"}))
        self.assertEqual(ui.get("/sdapi/v1/txt2img")[0], 405)
        for route in ("refresh-checkpoints", "refresh-vae"):
            self.assertEqual(ui.post(f"/sdapi/v1/{route}"), (200, None), route)
        self.assertIn("Running on local URL:  http://127.0.0.1:%d" % ui.port, ui.stdout())
        self.assertIn("Startup time:", ui.stdout())
        for folder in ("Stable-diffusion", "Lora", "ControlNet"):
            self.assertTrue(os.path.isdir(os.path.join(self.data, "models", folder)), folder)

    def test_options_get_set_and_unknown_key(self):
        os.makedirs(self.tmp + "/data")
        with open(self.tmp + "/data/config.json", "w") as file:
            json.dump({"samples_format": "webp", "user_kept_key": 7}, file)
        ui = self.start()
        status, options = ui.get("/sdapi/v1/options")
        self.assertEqual(status, 200)
        self.assertEqual(len(options), 332)  # 331 captured keys + the unknown one from config.json
        self.assertEqual(options["samples_format"], "webp")
        self.assertEqual(options["outdir_txt2img_samples"], os.path.join(self.data, "outputs/txt2img-images"))

        self.assertEqual(ui.post("/sdapi/v1/options", {"jpeg_quality": 90}), (200, None))
        with open(self.data + "/config.json") as file:
            saved = json.load(file)
        self.assertEqual((saved["jpeg_quality"], saved["user_kept_key"], saved["samples_format"]), (90, 7, "webp"))

        before = self.read(self.data + "/config.json")
        status, body = ui.post("/sdapi/v1/options", {"samples_save": False, "no_such_key_xyz": 1})
        self.assertEqual(status, 500)
        self.assertEqual(body, {"error": "KeyError", "detail": "", "body": "", "message": "'no_such_key_xyz'"})
        self.assertEqual(self.read(self.data + "/config.json"), before, "nothing saved on error")
        self.assertIs(ui.get("/sdapi/v1/options")[1]["samples_save"], False, "keys before it changed in memory")

        status, body = ui.post("/sdapi/v1/options", {"sd_model_checkpoint": "missing.safetensors"})
        self.assertEqual((status, body["error"]), (500, "RuntimeError"))

    def test_sd_models_scan_and_refresh(self):
        ui = self.start()
        root = os.path.join(self.data, "models", "Stable-diffusion")
        outside = os.path.join(self.tmp, "store")
        os.makedirs(os.path.join(outside, "dir"))
        os.makedirs(os.path.join(root, "sub"))
        for path in (root + "/a.safetensors", root + "/a.yaml", root + "/sub/b.ckpt", root + "/c.gguf",
                     root + "/d.vae.safetensors", root + "/notes.txt", outside + "/real.safetensors",
                     outside + "/dir/e.safetensors"):
            open(path, "w").close()
        os.symlink(outside + "/real.safetensors", root + "/link.safetensors")
        os.symlink(outside + "/gone.safetensors", root + "/broken.safetensors")
        os.symlink(outside + "/dir", root + "/linkdir")
        self.assertEqual(ui.get("/sdapi/v1/sd-models"), (200, []), "no rescan without refresh")
        self.assertEqual(ui.post("/sdapi/v1/refresh-checkpoints"), (200, None))
        models = ui.get("/sdapi/v1/sd-models")[1]
        self.assertEqual([m["title"] for m in models],
                         ["a.safetensors", "c.gguf", "link.safetensors", "linkdir/e.safetensors", "sub/b.ckpt"])
        self.assertEqual(models[0], {"title": "a.safetensors", "model_name": "a", "hash": None, "sha256": None,
                                     "filename": root + "/a.safetensors", "config": root + "/a.yaml"})
        self.assertEqual((models[4]["model_name"], models[4]["config"]), ("sub_b", None))
        self.assertEqual(ui.post("/sdapi/v1/options", {"sd_model_checkpoint": "a.safetensors"}), (200, None))

    def test_txt2img_fifo_and_pending_tasks(self):
        ui = self.start()
        results = {}

        def submit(task, seconds):
            results[task] = ui.post("/sdapi/v1/txt2img", {"prompt": task, "force_task_id": task,
                                                          "stand_in_seconds": seconds}, timeout=20)
        threads = []
        for task, seconds, waiting in (("task(a)", 1.5, []), ("task(b)", 0.2, ["task(b)"]),
                                       ("task(c)", 0.2, ["task(b)", "task(c)"])):
            threads.append(threading.Thread(target=submit, args=(task, seconds), daemon=True))
            threads[-1].start()
            if not waiting:
                wait_until(lambda: ui.get("/sdapi/v1/progress")[1]["state"]["job"] == "scripts_txt2img")
            else:
                wait_until(lambda: ui.get("/internal/pending-tasks")[1]["tasks"] == waiting, what=str(waiting))
        self.assertEqual(ui.get("/internal/pending-tasks")[1], {"size": 2, "tasks": ["task(b)", "task(c)"]})
        busy = ui.get("/sdapi/v1/progress")[1]
        self.assertEqual((busy["state"]["job_count"], busy["current_image"]), (1, None))
        self.assertNotEqual(busy["state"]["job_timestamp"], "0")
        self.assertTrue(0 < busy["progress"] <= 1, busy)
        status, task_c = ui.post("/internal/progress", {"id_task": "task(c)"})
        self.assertEqual((task_c["active"], task_c["queued"], task_c["textinfo"]), (False, True, "In queue: 2/2"))
        self.assertTrue(ui.post("/internal/progress", {"id_task": "task(a)"})[1]["active"])
        for thread in threads:
            thread.join(15)
        status, reply = results["task(b)"]
        self.assertEqual((status, reply["parameters"]), (200, {
            "prompt": "task(b)", "force_task_id": "task(b)", "stand_in_seconds": 0.2}))
        self.assertEqual(json.loads(reply["info"])["prompt"], "task(b)")
        self.assertEqual([base64.b64decode(image)[:8] for image in reply["images"]], [b"\x89PNG\r\n\x1a\n"])
        jobs = [(r["event"], r["id"]) for r in ui.records() if r["event"] in ("job_start", "job_end")]
        self.assertEqual(jobs, [(e, t) for t in ("task(a)", "task(b)", "task(c)") for e in ("job_start", "job_end")])
        self.assertEqual(ui.get("/internal/pending-tasks")[1], {"size": 0, "tasks": []})
        state = ui.get("/sdapi/v1/progress")[1]["state"]
        self.assertEqual((state["job"], state["job_count"]), ("", 0))

    def test_txt2img_info_has_the_seed_used(self):
        ui = self.start(env={"STANDIN_JOB_SECONDS": "0.05"})
        status, reply = ui.post("/sdapi/v1/txt2img", {"prompt": "cat", "seed": 42, "steps": 3})
        info = json.loads(reply["info"])
        self.assertEqual((status, info["seed"], info["all_seeds"], info["steps"]), (200, 42, [42], 3))
        drawn = json.loads(ui.post("/sdapi/v1/txt2img", {"prompt": "cat", "seed": -1})[1]["info"])["seed"]
        self.assertTrue(0 <= drawn < 2**32, drawn)
        status, reply = ui.post("/sdapi/v1/txt2img", {"prompt": "cat", "override_settings": {
            "sd_model_checkpoint": "missing.safetensors"}})
        self.assertEqual((status, reply["error"]), (500, "RuntimeError"))

    def test_image_error_fails_txt2img_after_the_job(self):
        flag = os.path.join(self.tmp, "fail")
        ui = self.start(env={"STANDIN_JOB_SECONDS": "0.05", "STANDIN_IMAGE_ERROR": "@" + flag})
        self.assertEqual(ui.post("/sdapi/v1/txt2img", {"prompt": "cat"})[0], 200)
        with open(flag, "w") as file:
            file.write("CUDA out of memory\n")
        status, reply = ui.post("/sdapi/v1/txt2img", {"prompt": "cat"})
        self.assertEqual((status, reply["error"], reply["message"]), (500, "RuntimeError", "CUDA out of memory"))
        self.assertEqual([r["completed"] for r in ui.events("job_end")], [True, False])
        self.assertEqual(ui.get("/sdapi/v1/progress")[1]["state"]["job_count"], 0)

    def test_interrupt_ends_the_running_job(self):
        ui = self.start()
        result = []
        thread = threading.Thread(target=lambda: result.append(ui.post("/sdapi/v1/txt2img", {"stand_in_seconds": 30},
                                                                       timeout=20)), daemon=True)
        thread.start()
        wait_until(lambda: ui.events("job_start"))
        self.assertEqual(ui.post("/sdapi/v1/interrupt"), (200, {}))
        thread.join(5)
        self.assertFalse(thread.is_alive())
        self.assertEqual(result[0][1]["images"], [])
        self.assertEqual([r["completed"] for r in ui.events("job_end")], [False])
        self.assertTrue(ui.events("job_start")[0]["id"].startswith("task(txt2img-"))
        state = ui.get("/sdapi/v1/progress")[1]["state"]
        self.assertEqual((state["interrupted"], state["job_count"]), (True, 0))

    def test_api_routes_need_api_flag_and_nowebui_has_no_internal(self):
        ui = self.start(args=["--data-dir", self.tmp + "/d", "--port", "{port}"])
        self.assertEqual(ui.get("/sdapi/v1/progress")[0], 404)
        self.assertEqual(ui.post("/sdapi/v1/refresh-loras")[0], 404)  # Forge dfdcbab has no lora routes
        api = self.start(args=["--nowebui", "--server-name", "127.0.0.1", "--data-dir", self.tmp + "/e",
                               "--port", "{port}"], ready=False)
        wait_until(lambda: api.get("/sdapi/v1/progress", timeout=1)[0] == 200 if api.events("listening") else False)
        self.assertEqual(api.get("/internal/ping")[0], 404)

    def test_api_auth(self):
        ui = self.start(args=["--api", "--api-auth", "sup:secret", "--data-dir", self.tmp + "/d",
                              "--server-name", "127.0.0.1", "--port", "{port}"])
        self.assertEqual(ui.get("/sdapi/v1/progress"), (401, {"detail": "Not authenticated"}))
        for credentials, status in (("sup:wrong", 401), ("sup:secret", 200)):
            req = urllib.request.Request(f"http://127.0.0.1:{ui.port}/sdapi/v1/progress", headers={
                "Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()})
            try:
                with urllib.request.urlopen(req, timeout=5) as resp:
                    self.assertEqual(resp.status, status)
            except urllib.error.HTTPError as err:
                self.assertEqual((err.code, err.headers["WWW-Authenticate"]), (status, "Basic"))
                self.assertEqual(json.loads(err.read()), {"detail": "Incorrect username or password"})
        self.assertEqual(ui.get("/internal/pending-tasks")[0], 200)  # /internal/* has no auth
        code, bad = self.run_to_exit("forge", ["--api", "--api-auth", "sup:pa:ss", "--data-dir", self.tmp + "/e"])
        self.assertEqual(code, 1)
        self.assertIn("ValueError", bad.stderr())

    def test_listen_binds_all_interfaces(self):
        ui = self.start(args=["--api", "--listen", "--data-dir", self.tmp + "/d", "--port", "{port}"])
        self.assertEqual(ui.events("listening")[0]["host"], "0.0.0.0")
        self.assertIn("Running on local URL:  http://0.0.0.0:%d" % ui.port, ui.stdout())

    def test_a1111_flavor(self):
        ui = self.start("a1111")
        root = os.path.join(self.data, "models", "Stable-diffusion")
        for name in ("x.safetensors", "y.gguf"):
            open(os.path.join(root, name), "w").close()
        ui.post("/sdapi/v1/refresh-checkpoints")
        self.assertEqual([m["title"] for m in ui.get("/sdapi/v1/sd-models")[1]], ["x.safetensors"])
        status, body = ui.post("/sdapi/v1/options", {"no_such_key_xyz": 1})
        self.assertEqual((status, body), (500, {"error": "KeyError", "detail": "", "body": "",
                                                "errors": "'no_such_key_xyz'"}))
        self.assertFalse(os.path.exists(os.path.join(self.data, "models", "ControlNet")))


class RealForgeQuirkTests(StandInCase):
    """What the real Forge dfdcbab and A1111 do that a supervisor must cope with (ui-apis.md §7.1, §10)."""

    def test_forge_has_no_lora_routes_and_refresh_embeddings_fails(self):
        ui = self.start()
        self.assertEqual(ui.post("/sdapi/v1/refresh-loras"), (404, {"detail": "Not Found"}))
        self.assertEqual(ui.get("/sdapi/v1/loras")[0], 404)
        status, body = ui.post("/sdapi/v1/refresh-embeddings")
        self.assertEqual((status, body["error"]), (500, "AttributeError"))
        self.assertIn("embedding_db", body["message"])
        status, schema = ui.get("/openapi.json")
        self.assertEqual(status, 200)
        self.assertIn("/sdapi/v1/refresh-checkpoints", schema["paths"])
        self.assertIn("post", schema["paths"]["/sdapi/v1/refresh-checkpoints"])
        self.assertNotIn("/sdapi/v1/refresh-loras", schema["paths"])

    def test_a1111_keeps_its_lora_routes(self):
        ui = self.start("a1111")
        self.assertEqual(ui.post("/sdapi/v1/refresh-loras"), (200, None))
        self.assertEqual(ui.post("/sdapi/v1/refresh-embeddings"), (200, None))
        self.assertIn("/sdapi/v1/refresh-loras", ui.get("/openapi.json")[1]["paths"])

    def test_commandline_args_are_appended_to_argv_and_printed(self):
        ui = self.start(env={"COMMANDLINE_ARGS": "--api-auth sup:pw", "STANDIN_PRINT_ENV": "1"})
        self.assertIn("--api-auth sup:pw", ui.stdout())
        self.assertIn("COMMANDLINE_ARGS=--api-auth sup:pw", ui.stdout())
        self.assertEqual(ui.get("/sdapi/v1/progress")[0], 401, "the credentials from the environment apply")

    def test_no_git_on_path_exits_1_like_gitpython(self):
        for flavor in ("forge", "a1111"):
            code, proc = self.run_to_exit(flavor, ["--api", "--data-dir", self.tmp + "/g" + flavor],
                                          env={"PATH": "/nonexistent"})
            self.assertEqual(code, 1, flavor)
            self.assertIn("ImportError: Bad git executable.", proc.stderr())
            self.assertEqual(proc.events("exit")[0]["reason"], "git")
        ui = self.start("comfyui", env={"PATH": "/nonexistent"})  # ComfyUI needs no git
        self.assertEqual(ui.get("/system_stats")[0], 200)

    def test_first_sigint_lost_second_exits(self):
        ui = self.start(env={"STANDIN_LOSE_FIRST_SIGINT": "1"})
        ui.proc.send_signal(signal.SIGINT)
        wait_until(lambda: ui.events("signal"))
        time.sleep(0.3)
        self.assertIsNone(ui.proc.poll(), "the first SIGINT is lost")
        self.assertEqual(ui.events("signal")[0]["lost"], True)
        ui.proc.send_signal(signal.SIGINT)
        self.assertEqual(ui.wait_exit(3), 0)
        self.assertEqual(ui.events("exit")[0]["reason"], "SIGINT")


class FlagTests(StandInCase):
    def test_unknown_flags_and_bad_values_exit_2(self):
        cases = [("forge", ["--no-such-flag"]), ("forge", ["--port", "abc"]), ("a1111", ["--always-cpu", "--always-gpu"]),
                 ("comfyui", ["--no-such-flag"]), ("comfyui", ["--cpu", "--lowvram"]),
                 ("comfyui", ["--user-directory", "/nonexistent/dir"])]
        for flavor, args in cases:
            code, proc = self.run_to_exit(flavor, args)
            self.assertEqual(code, 2, (flavor, args, proc.stderr()))
            self.assertIn("error:", proc.stderr())
        self.assertIn("unrecognized arguments: --no-such-flag", self.procs[0].stderr())
        self.assertEqual(self.procs[0].events("exit")[0]["code"], 2)

    def test_commandline_args_env_is_parsed(self):
        code, proc = self.run_to_exit("forge", ["--api"], env={"COMMANDLINE_ARGS": "--bogus-flag"})
        self.assertEqual(code, 2)
        self.assertIn("--bogus-flag", proc.stderr())

    def test_help_works(self):
        for flavor, prog in (("forge", "launch.py"), ("comfyui", "main.py")):
            code, proc = self.run_to_exit(flavor, ["--help"])
            self.assertEqual(code, 0)
            self.assertIn(f"usage: {prog}", proc.stdout())
            self.assertIn("--data-dir" if flavor == "forge" else "--base-directory", proc.stdout())

    def test_flags_with_odd_arities_start(self):
        """nargs '?', '*', '+', append and typed values parse like the real parsers, and the UI starts."""
        forge = ["--api", "--always-cpu", "--use-cpu", "all", "--directml", "--precision", "full",
                 "--gpu-device-id", "0", "--lora-dir", self.tmp, "--styles-file", "a", "--styles-file", "b"]
        comfy = ["--cpu", "--extra-model-paths-config", "a.yaml", "b.yaml", "--extra-model-paths-config", "c.yaml",
                 "--fast", "--cuda-device", "0", "--verbose", "--enable-cors-header", "--preview-method", "auto",
                 "--user-directory", self.tmp, "--listen"]
        os.makedirs(os.path.join(self.tmp, "custom_nodes"))  # cwd is the default base directory
        for flavor, args in (("forge", forge), ("comfyui", comfy)):
            ui = self.start(flavor, args + ["--port", "{port}"])
            self.assertEqual(ui.events("start")[0]["argv"][1:], ui.argv[1:])


class LifecycleTests(StandInCase):
    def test_starts_fast_and_records_events(self):
        ui = self.start()
        start, listening = ui.events("start")[0], ui.events("listening")[0]
        self.assertLess(listening["t"] - start["t"], 0.2)
        self.assertEqual((start["flavor"], start["argv"][1:]), ("forge", ui.argv[1:]))
        self.assertEqual(start["sig_blocked"], [])
        self.assertNotIn("SIGINT", start["sig_ignored"])
        self.assertEqual(listening["port"], ui.port)
        ui.post("/sdapi/v1/options", {"jpeg_quality": 70})
        requests = ui.events("request")
        self.assertIn({"method": "POST", "path": "/sdapi/v1/options", "query": "", "body": {"jpeg_quality": 70}},
                      [{k: r[k] for k in ("method", "path", "query", "body")} for r in requests])
        self.assertTrue(all("pid" in r and "t" in r for r in ui.records()))

    def test_two_processes_share_one_record_file(self):
        first, second = self.start(), self.start(subdir="other")
        for _ in range(20):
            first.get("/internal/ping")
            second.get("/internal/ping")
        pids = [r["pid"] for r in first.records()]  # every line parses
        self.assertEqual({first.proc.pid, second.proc.pid}, set(pids))

    def test_forge_sigint_exits_0_and_abandons_the_job(self):
        ui = self.start()
        threading.Thread(target=lambda: self.swallow(ui.post, "/sdapi/v1/txt2img", {"stand_in_seconds": 30}),
                         daemon=True).start()
        wait_until(lambda: ui.events("job_start"))
        ui.proc.send_signal(signal.SIGINT)
        self.assertEqual(ui.wait_exit(3), 0)
        self.assertIn("Interrupted with signal 2 in <frame", ui.stdout())
        self.assertEqual([r["signal"] for r in ui.events("signal")], ["SIGINT"])
        self.assertEqual(ui.events("exit")[0]["code"], 0)
        self.assertEqual(ui.events("job_end"), [])

    def test_a_stalled_job_stops_progressing_until_interrupted(self):
        for deaf in ("0", "1"):
            ui = self.start(env={"STANDIN_STALL_AFTER": "0.3", "STANDIN_STALL_DEAF": deaf}, subdir=f"deaf{deaf}")
            done = []
            threading.Thread(target=lambda: done.append(ui.post("/sdapi/v1/txt2img", {"stand_in_seconds": 5,
                                                                                     "steps": 20}, timeout=20)),
                             daemon=True).start()
            wait_until(lambda: ui.events("job_stalled"))
            step = ui.get("/sdapi/v1/progress")[1]["state"]["sampling_step"]
            time.sleep(0.5)
            self.assertEqual(ui.get("/sdapi/v1/progress")[1]["state"]["sampling_step"], step, "frozen")
            self.assertLess(step, 20)
            ui.post("/sdapi/v1/interrupt")
            time.sleep(0.5)
            if deaf == "1":
                self.assertEqual(done, [], "a deaf stall ignores the interrupt")
                self.assertEqual(ui.get("/sdapi/v1/progress")[1]["state"]["job_count"], 1)
            else:
                wait_until(lambda: done)
                self.assertEqual(ui.events("job_end")[0]["completed"], False)

    def test_unload_checkpoint_answers_and_is_recorded(self):
        ui = self.start()
        self.assertEqual(ui.post("/sdapi/v1/unload-checkpoint"), (200, {}))
        self.assertEqual(len(ui.events("unload")), 1)

    def test_a_slow_answer_is_cut_off_by_sigint(self):
        ui = self.start()
        self.assertEqual(ui.get("/sdapi/v1/options?stand_in_body_delay=0.2")[0], 200)
        conn = socket.create_connection(("127.0.0.1", ui.port), timeout=5)
        conn.sendall(b"GET /sdapi/v1/options?stand_in_body_delay=5 HTTP/1.1\r\nHost: x\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += conn.recv(4096)
        self.assertIn(b"200 OK", head)
        ui.proc.send_signal(signal.SIGINT)
        self.assertEqual(ui.wait_exit(3), 0)
        rest = head.split(b"\r\n\r\n", 1)[1]
        while chunk := conn.recv(4096):
            rest += chunk
        conn.close()
        self.assertEqual(rest, b"", "the body never came")

    @staticmethod
    def swallow(fn, *args):
        try:
            fn(*args, timeout=20)
        except OSError:
            pass

    def test_sigterm_and_sighup_kill_by_default_action(self):
        for flavor, signum in (("forge", signal.SIGTERM), ("comfyui", signal.SIGTERM), ("a1111", signal.SIGHUP)):
            ui = self.start(flavor, subdir=flavor)
            ui.proc.send_signal(signum)
            self.assertEqual(ui.wait_exit(3), -signum)
            self.assertEqual([r["signal"] for r in ui.events("signal")], [signum.name])

    def test_ignore_sigint(self):
        ui = self.start(env={"STANDIN_IGNORE_SIGINT": "1"})
        ui.proc.send_signal(signal.SIGINT)
        time.sleep(0.5)
        self.assertIsNone(ui.proc.poll())
        self.assertEqual(ui.get("/internal/ping"), (200, {}))
        self.assertEqual(ui.events("signal"), [])
        ui.proc.send_signal(signal.SIGTERM)
        self.assertEqual(ui.wait_exit(3), -signal.SIGTERM)

    def test_inherited_sig_ign_like_the_real_uis(self):
        comfy = self.start("comfyui", ignore_sigint=True)  # a real ComfyUI then never stops on SIGINT
        self.assertIn("SIGINT", comfy.events("start")[0]["sig_ignored"])
        comfy.proc.send_signal(signal.SIGINT)
        time.sleep(0.5)
        self.assertIsNone(comfy.proc.poll())
        forge = self.start(ignore_sigint=True, subdir="forge")  # Forge installs its own handler
        forge.proc.send_signal(signal.SIGINT)
        self.assertEqual(forge.wait_exit(3), 0)

    def test_crash_after(self):
        ui = self.start(env={"STANDIN_CRASH_AFTER": "0.5", "STANDIN_EXIT_CODE": "3"}, ready=False)
        self.assertEqual(ui.wait_exit(5), 3)
        start, exit_ = ui.events("start")[0], ui.events("exit")[0]
        self.assertEqual(exit_["code"], 3)
        self.assertGreaterEqual(exit_["t"] - start["t"], 0.45)

    def test_crash_default_code_is_1(self):
        ui = self.start("comfyui", env={"STANDIN_CRASH_AFTER": "0.3"}, ready=False)
        self.assertEqual(ui.wait_exit(5), 1)

    def test_hang_after(self):
        ui = self.start(env={"STANDIN_HANG_AFTER": "1.5"})
        self.assertEqual(ui.get("/internal/ping"), (200, {}))
        wait_until(lambda: "no longer answering" in ui.stderr(), what="the hang")
        with self.assertRaises(OSError):  # socket.timeout / URLError
            ui.get("/internal/ping", timeout=0.7)
        socket.create_connection(("127.0.0.1", ui.port), timeout=1).close()  # still accepts
        self.assertIsNone(ui.proc.poll())

    def test_start_delay(self):
        ui = self.start(env={"STANDIN_START_DELAY": "0.8"}, ready=False)
        wait_until(lambda: ui.events("start"), what="the start record")
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", ui.port), timeout=1)
        ui.wait_ready()
        self.assertGreaterEqual(ui.events("listening")[0]["t"] - ui.events("start")[0]["t"], 0.8)


class ComfyTests(StandInCase):
    PROMPT = {"1": {"class_type": "EmptyImage", "inputs": {"width": 64}}, "3": {"class_type": "SaveImage", "inputs": {}}}

    def test_dies_without_custom_nodes(self):
        code, proc = self.run_to_exit("comfyui", ["--base-directory", self.tmp + "/empty", "--port", "{port}"])
        self.assertEqual(code, 1)
        self.assertIn("FileNotFoundError", proc.stderr())
        self.assertIn("custom_nodes", proc.stderr())
        self.assertEqual(proc.events("exit")[0]["code"], 1)

    def test_routes_and_shapes(self):
        ui = self.start("comfyui")
        status, stats = ui.get("/system_stats")
        self.assertEqual((status, set(stats["system"]), set(stats["devices"][0])), (200, SYSTEM_KEYS, DEVICE_KEYS))
        self.assertEqual(stats["system"]["argv"], ui.argv)
        self.assertEqual(stats["devices"][0]["type"], "cpu")
        self.assertEqual(ui.get("/api/system_stats")[0], 200)
        self.assertEqual(ui.get("/queue"), (200, {"queue_running": [], "queue_pending": []}))
        self.assertEqual(ui.get("/api/prompt"), (200, {"exec_info": {"queue_remaining": 0}}))
        self.assertEqual(ui.get("/history"), (200, {}))
        self.assertEqual(ui.get("/nope"), (404, "404: Not Found"))
        self.assertEqual(ui.post("/prompt", {"client_id": "x"})[1]["error"]["type"], "no_prompt")
        for folder in ("input", "temp", "user"):
            self.assertTrue(os.path.isdir(os.path.join(self.data, folder)), folder)
        os.makedirs(os.path.join(self.data, "models", "clip"))
        open(os.path.join(self.data, "models", "clip", "t5.safetensors"), "w").close()
        self.assertEqual(ui.get("/models/text_encoders"), (200, ["t5.safetensors"]))
        self.assertIn("To see the GUI go to: http://127.0.0.1:%d" % ui.port, ui.stderr())

    def test_queue_interrupt_delete_clear_history(self):
        ui = self.start("comfyui")
        ids = [ui.post("/prompt", {"prompt": self.PROMPT, "stand_in_seconds": 30})[1]["prompt_id"]]
        wait_until(lambda: ui.get("/queue")[1]["queue_running"])
        for n in range(3):
            status, reply = ui.post("/api/prompt", {"prompt": self.PROMPT, "client_id": "me"})
            self.assertEqual((status, reply["number"], reply["node_errors"]), (200, n + 1, {}))
            ids.append(reply["prompt_id"])
        queue = ui.get("/queue")[1]
        self.assertEqual(queue["queue_running"], [[0, ids[0], self.PROMPT, {}, ["3"]]])
        self.assertEqual(queue["queue_pending"][0], [1, ids[1], self.PROMPT, {"client_id": "me"}, ["3"]])
        self.assertEqual(ui.get("/prompt")[1], {"exec_info": {"queue_remaining": 4}})
        ui.post("/queue", {"delete": [ids[2]]})
        self.assertEqual([item[1] for item in ui.get("/queue")[1]["queue_pending"]], [ids[1], ids[3]])
        ui.post("/queue", {"clear": True})
        self.assertEqual(ui.get("/queue")[1]["queue_pending"], [])
        self.assertEqual(ui.post("/interrupt"), (200, ""))
        wait_until(lambda: ui.get("/prompt")[1]["exec_info"]["queue_remaining"] == 0)
        self.assertEqual([r["completed"] for r in ui.events("job_end")], [False])
        history = ui.get("/history?max_items=1")[1]
        self.assertEqual(list(history), [ids[0]])
        self.assertEqual(history[ids[0]]["status"]["status_str"], "error")

    def test_free_waits_for_the_running_prompt_and_wants_a_json_object(self):
        ui = self.start("comfyui")
        for bad in (None, [], "x"):
            self.assertEqual(ui.post("/free", bad)[0], 500, bad)
        self.assertEqual(ui.post("/free", {"unload_models": False})[0], 200)
        self.assertEqual(ui.events("free"), [], "a false flag does nothing")
        self.assertEqual(ui.post("/free", {"unload_models": True, "free_memory": True})[0], 200)
        wait_until(lambda: ui.events("free"))
        ui.post("/prompt", {"prompt": self.PROMPT, "stand_in_seconds": 1})
        wait_until(lambda: ui.events("job_start"))
        ui.post("/free", {"free_memory": True})
        time.sleep(0.3)
        self.assertEqual(len(ui.events("free")), 1, "not while a prompt runs")
        wait_until(lambda: len(ui.events("free")) == 2)
        self.assertGreater(ui.events("free")[1]["t"], ui.events("job_end")[0]["t"])

    def test_ws_status_messages(self):
        ui = self.start("comfyui")
        ws, mine = WsClient(ui.port), WsClient(ui.port, "/ws?clientId=me")
        try:
            self.assertTrue(ws.status_line.startswith("HTTP/1.1 101") and ws.accept_ok, ws.status_line)
            hello = ws.recv_json()
            self.assertEqual(hello["type"], "status")
            self.assertEqual(hello["data"]["status"], {"exec_info": {"queue_remaining": 0}})
            self.assertTrue(hello["data"]["sid"])
            self.assertEqual(mine.recv_json()["data"]["sid"], "me")
            ws.send(0x9, b"hi")
            self.assertEqual(ws.recv(), (0xA, b"hi"))

            first = ui.post("/prompt", {"prompt": self.PROMPT, "client_id": "me", "stand_in_seconds": 0.8})[1]
            seen = [ws.recv_json(), ws.recv_json()]  # enqueue and dequeue
            second = ui.post("/prompt", {"prompt": self.PROMPT, "stand_in_seconds": 0.2})[1]
            others = []  # a prompt without client_id: its progress goes to every socket
            while len(seen) < 6:
                message = ws.recv_json(timeout=5)
                (seen if message["type"] == "status" else others).append(message)
            self.assertEqual({m["data"]["prompt_id"] for m in others}, {second["prompt_id"]})
            self.assertIn("progress", [m["type"] for m in others])
            self.assertNotIn("executing", [m["type"] for m in others], "sent to a prompt's own client only")
            self.assertTrue(all("sid" not in m["data"] for m in seen))
            self.assertEqual([m["data"]["status"]["exec_info"]["queue_remaining"] for m in seen], [1, 1, 2, 1, 1, 0])

            events = []
            while not events or events[-1] != ("executing", first["prompt_id"], None):
                message = mine.recv_json()
                if message["type"] != "status":
                    data = message["data"]
                    events.append((message["type"], data.get("prompt_id"), data.get("node", "-")))
            kinds = [e[0] for e in events]
            self.assertEqual(kinds[:2], ["execution_start", "executing"])
            self.assertEqual(kinds[-2:], ["execution_success", "executing"])
            self.assertEqual(set(kinds[2:-2]), {"progress_state", "progress"})
            self.assertEqual({e[1] for e in events}, {first["prompt_id"]}, "only its own prompt's")
            ws.send(0x8, struct.pack("!H", 1000))
            self.assertEqual(ws.recv()[0], 0x8)
        finally:
            ws.close()
            mine.close()

    WORKFLOW = {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
                "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 1, "sigma": 1.0}},
                "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "decl/cat"}}}

    def finished(self, ui, prompt_id):
        return wait_until(lambda: ui.get(f"/history/{prompt_id}")[1], what="the history entry")[prompt_id]

    def test_save_image_lands_in_history_and_view(self):
        ui = self.start("comfyui", env={"STANDIN_JOB_SECONDS": "0.05"})
        prompt_id = ui.post("/prompt", {"prompt": self.WORKFLOW, "client_id": "sup"})[1]["prompt_id"]
        entry = self.finished(ui, prompt_id)
        self.assertEqual(entry["status"]["status_str"], "success")
        image = {"filename": "cat_00001_.png", "subfolder": "decl", "type": "output"}
        self.assertEqual(entry["outputs"], {"3": {"images": [image]}})
        self.assertTrue(os.path.isfile(os.path.join(self.data, "output", "decl", "cat_00001_.png")))
        req = urllib.request.Request(f"http://127.0.0.1:{ui.port}/view?filename=cat_00001_.png&subfolder=decl&type=output")
        with urllib.request.urlopen(req, timeout=5) as resp:
            self.assertEqual((resp.headers["Content-Type"], resp.read()[:8]), ("image/png", b"\x89PNG\r\n\x1a\n"))
        self.assertEqual(ui.get("/view?filename=nope.png")[0], 404)
        self.assertEqual(ui.get("/view?filename=../x.png")[0], 400)
        second = ui.post("/prompt", {"prompt": self.WORKFLOW})[1]["prompt_id"]
        self.assertEqual(self.finished(ui, second)["outputs"]["3"]["images"][0]["filename"], "cat_00002_.png")

    def test_prompt_without_outputs_is_refused(self):
        ui = self.start("comfyui")
        status, reply = ui.post("/prompt", {"prompt": {"1": self.WORKFLOW["1"]}})
        self.assertEqual((status, reply["error"]["type"], reply["node_errors"]), (400, "prompt_no_outputs", []))

    def test_image_error_ends_the_prompt_in_error(self):
        ui = self.start("comfyui", env={"STANDIN_JOB_SECONDS": "0.05", "STANDIN_IMAGE_ERROR": "boom"})
        prompt_id = ui.post("/prompt", {"prompt": self.WORKFLOW})[1]["prompt_id"]
        entry = self.finished(ui, prompt_id)
        self.assertEqual((entry["status"]["status_str"], entry["status"]["completed"], entry["outputs"]),
                         ("error", False, {}))
        kind, data = entry["status"]["messages"][-1]
        self.assertEqual((kind, data["node_id"], data["node_type"], data["exception_message"]),
                         ("execution_error", "3", "SaveImage", "boom\n"))

    def test_sigint_stops_promptly_during_a_prompt(self):
        ui = self.start("comfyui")
        ui.post("/prompt", {"prompt": self.PROMPT, "stand_in_seconds": 30})
        wait_until(lambda: ui.events("job_start"))
        ui.proc.send_signal(signal.SIGINT)
        self.assertEqual(ui.wait_exit(3), 0)
        self.assertIn("Stopped server", ui.stderr())
        self.assertFalse(os.path.exists(os.path.join(self.data, "temp")))
        self.assertEqual([r["signal"] for r in ui.events("signal")], ["SIGINT"])
        self.assertEqual(ui.events("job_end"), [])

    def test_listen_without_value_binds_all(self):
        os.makedirs(self.tmp + "/c/custom_nodes")
        ui = self.start("comfyui", args=["--base-directory", self.tmp + "/c", "--port", "{port}", "--listen"])
        self.assertEqual(ui.events("listening")[0]["host"], "0.0.0.0")


if __name__ == "__main__":
    unittest.main()
