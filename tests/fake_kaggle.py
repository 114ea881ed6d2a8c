"""A stand-in for Kaggle's servers, for tests that drive the REAL kaggle client.

kagglesdk's TEST environment (KAGGLE_API_ENVIRONMENT=TEST) is hard-wired to
http://localhost:7777, so this server listens on 127.0.0.1:7777 and answers what the client asks:

    POST /api/v1/competitions.CompetitionApiService/DownloadDataFiles
         -> 302 to /storage/<competition>.zip?sig=... (Kaggle redirects to a signed GCS URL)
    GET  /storage/<competition>.zip
         -> the archive, with Content-Length, Accept-Ranges, ETag and Last-Modified, and
            206 Partial Content for `Range: bytes=N-` (honouring If-Range), as GCS does
    POST /api/v1/security.OAuthService/IntrospectToken
         -> {"active": true, "username": ...} for the configured KAGGLE_API_TOKEN

Switches: `fail_with = 401 | 403` answers DownloadDataFiles with Kaggle's JSON error body;
`drop_after = N` sends the headers of the whole archive, N bytes of it, then closes the
connection, once (the next request gets everything).

The upload side (`make upload`, KaggleApi.dataset_create_new / dataset_create_version / kernels_push):

    POST /api/v1/datasets.DatasetApiService/GetDatasetStatus
         -> 404 (or `unknown_dataset_status`: 403, as Kaggle may answer) for a dataset it does not
            hold, else {"status": ...}: the next of `statuses` after each create or version, then
            READY ("FORBIDDEN" in `statuses`: a 403, a dataset just created and not visible yet;
            "STALE": READY while the previous version is still the current one)
    POST /api/v1/datasets.DatasetApiService/GetDataset
         -> {"currentVersionNumber": ...}: the version the last GetDatasetStatus answered for
    POST /api/v1/blobs.BlobApiService/StartBlobUpload
         -> {"token", "createUrl": /upload/<token>}, the URL the client PUTs the file to (GCS's role)
    PUT  /upload/<token>   -> stores the bytes
    POST /api/v1/datasets.DatasetApiService/CreateDataset, .../CreateDatasetVersion
         -> the files of the new version, looked up by their blob tokens, land in `datasets[ref]`
    POST /api/v1/kernels.KernelsApiService/SaveKernel
         -> the request lands in `kernels`; `kernel_response` adds fields to the answer

`fail = {"CreateDataset": 403, ...}` answers that call with Kaggle's JSON error body.

Only one server can hold the port: `serving()` takes a machine-wide lock first, so parallel
test runs wait for each other instead of failing, and skips with a clear reason when something
else keeps the port busy.
"""
from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

HOST, PORT = "127.0.0.1", 7777
API = "/api/v1"
LOCK_FILE = Path(tempfile.gettempdir()) / "fake-kaggle-7777.lock"
LOCK_WAIT_S = 60


@dataclass
class FakeKaggle:
    """What the server serves and how it misbehaves; `requests` logs what it was asked."""

    archives: dict[str, bytes]  # competition slug -> zip bytes
    username: str = "tester"
    key: str = ""
    token: str = ""  # a KAGGLE_API_TOKEN it accepts as a Bearer token
    fail_with: int | None = None  # 401 or 403 for DownloadDataFiles
    forbidden_message: str = "You must accept this competition's rules before you'll be able to download files."
    drop_after: int | None = None  # close the next archive download after this many bytes
    last_modified: float = 1_700_000_000.0
    # upload side
    datasets: dict[str, list[dict]] = field(default_factory=dict)  # "owner/slug" -> versions
    # what GetDatasetStatus says after an upload, then READY; "FORBIDDEN": a 403, as for a dataset not visible yet;
    # "STALE": READY, with GetDataset still on the previous version
    statuses: list[str] = field(default_factory=list)
    current_version: dict[str, int] = field(default_factory=dict)  # "owner/slug" -> what GetDataset reports
    unknown_dataset_status: int = 404  # GetDatasetStatus of a dataset it does not hold (403: the real server's answer)
    fail: dict[str, int] = field(default_factory=dict)  # RPC name -> HTTP status to answer it with
    kernels: list[dict] = field(default_factory=list)  # SaveKernel requests
    kernel_response: dict = field(default_factory=dict)  # extra fields of SaveKernel's answer
    blobs: dict[str, dict] = field(default_factory=dict)  # token -> {"name", "contentLength", "data"}
    pending: dict[str, list[str]] = field(default_factory=dict, repr=False)
    requests: list[dict] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def url(self) -> str:
        return f"http://localhost:{PORT}"

    def etag(self, competition: str) -> str:
        return '"' + hashlib.md5(self.archives[competition]).hexdigest() + '"'

    def authorized(self, header: str | None) -> bool:
        if not header:
            return False
        scheme, _, value = header.partition(" ")
        if scheme == "Bearer":
            return bool(self.token) and value == self.token
        expected = base64.b64encode(f"{self.username}:{self.key}".encode()).decode()
        return scheme == "Basic" and value == expected

    def log(self, **entry) -> None:
        with self.lock:
            self.requests.append(entry)

    def calls(self, what: str) -> list[dict]:
        return [r for r in self.requests if r["what"] == what]


class _Handler(BaseHTTPRequestHandler):
    server_version = "FakeKaggle/1.0"
    protocol_version = "HTTP/1.0"  # one request per connection: dropping one is then unambiguous

    @property
    def fake(self) -> FakeKaggle:
        return self.server.fake  # type: ignore[attr-defined]

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    # -- plumbing

    def _json(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"code": status, "message": message})

    def _raw_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _body(self) -> dict:
        raw = self._raw_body()
        try:
            return json.loads(raw or b"{}")
        except ValueError:
            return {}

    # -- routes

    def do_POST(self) -> None:
        body = self._body()
        path = self.path.split("?")[0]
        if path == f"{API}/competitions.CompetitionApiService/DownloadDataFiles":
            self._download_data_files(body)
        elif path == f"{API}/security.OAuthService/IntrospectToken":
            self._introspect(body)
        elif path.startswith(API + "/") and path.rsplit("/", 1)[-1] in self.UPLOAD_RPCS:
            self._upload_rpc(path.rsplit("/", 1)[-1], body)
        else:
            self.fake.log(what="unknown", method="POST", path=self.path)
            self._error(404, f"fake Kaggle does not implement {path}")

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if path.startswith("/storage/") and path.endswith(".zip"):
            self._archive(path[len("/storage/"):-len(".zip")])
        else:
            self.fake.log(what="unknown", method="GET", path=self.path)
            self._error(404, "Not found")

    def do_PUT(self) -> None:
        path = self.path.split("?")[0]
        data = self._raw_body()
        token = path[len("/upload/"):] if path.startswith("/upload/") else None
        if token not in self.fake.blobs:
            self.fake.log(what="unknown", method="PUT", path=self.path)
            return self._error(404, "No such upload")
        self.fake.blobs[token]["data"] = data
        self.fake.log(what="PUT", token=token, name=self.fake.blobs[token]["name"], size=len(data),
                      auth=self.headers.get("Authorization"))
        self._json(200, {})

    # -- the upload side

    UPLOAD_RPCS = ("GetDatasetStatus", "GetDataset", "StartBlobUpload", "CreateDataset", "CreateDatasetVersion", "SaveKernel")

    def _upload_rpc(self, rpc: str, body: dict) -> None:
        self.fake.log(what=rpc, body=body, auth=self.headers.get("Authorization"))
        if not self.fake.authorized(self.headers.get("Authorization")):
            return self._error(401, "Unauthenticated")
        if rpc in self.fake.fail:
            status = self.fake.fail[rpc]
            return self._error(status, {403: "Permission 'datasets.create' was denied"}.get(status, "Failed"))
        getattr(self, f"_rpc_{rpc}")(body)

    def _rpc_GetDatasetStatus(self, body: dict) -> None:
        ref = f"{body.get('ownerSlug')}/{body.get('datasetSlug')}"
        denied = "Permission 'datasets.get' was denied"
        if ref not in self.fake.datasets:
            status = self.fake.unknown_dataset_status
            return self._error(status, denied if status == 403 else "Not found")
        queue = self.fake.pending.get(ref) or []
        status = queue.pop(0) if queue else "READY"
        if status == "FORBIDDEN":
            return self._error(403, denied)
        if status == "STALE":  # the previous version's status and number, for a moment
            return self._json(200, {"status": "READY"})
        self.fake.current_version[ref] = len(self.fake.datasets[ref])
        self._json(200, {"status": status})

    def _rpc_GetDataset(self, body: dict) -> None:
        ref = f"{body.get('ownerSlug')}/{body.get('datasetSlug')}"
        if ref not in self.fake.datasets:
            return self._error(403, "Permission 'datasets.get' was denied")
        version = self.fake.current_version.get(ref, len(self.fake.datasets[ref]))
        self._json(200, {"ref": ref, "currentVersionNumber": version})

    def _rpc_StartBlobUpload(self, body: dict) -> None:
        token = f"blob-{len(self.fake.blobs) + 1}"
        self.fake.blobs[token] = {"name": body.get("name"), "contentLength": body.get("contentLength"), "data": None,
                                  "type": body.get("type")}
        self._json(200, {"token": token, "createUrl": f"{self.fake.url}/upload/{token}"})

    def _new_version(self, ref: str, files: list[dict], request: dict) -> None:
        received = {}
        for f in files:
            blob = self.fake.blobs.get(f.get("token"))
            if blob is None or blob["data"] is None:
                return self._error(400, f"Unknown or incomplete blob {f.get('token')}")
            received[blob["name"]] = blob["data"]
        self.fake.datasets.setdefault(ref, []).append({"files": received, "request": request})
        self.fake.pending[ref] = list(self.fake.statuses)
        self._json(200, {"ref": ref, "url": f"{self.fake.url}/datasets/{ref}", "status": "ok", "error": "",
                         "invalidTags": []})

    def _rpc_CreateDataset(self, body: dict) -> None:
        ref = f"{body.get('ownerSlug')}/{body.get('slug')}"
        if ref in self.fake.datasets:
            return self._json(200, {"status": "error", "error": f"The slug {ref} is already in use"})
        self._new_version(ref, body.get("files", []), body)

    def _rpc_CreateDatasetVersion(self, body: dict) -> None:
        ref = f"{body.get('ownerSlug')}/{body.get('datasetSlug')}"
        if ref not in self.fake.datasets:
            return self._error(404, "Dataset not found")
        self._new_version(ref, (body.get("body") or {}).get("files", []), body)

    def _rpc_SaveKernel(self, body: dict) -> None:
        self.fake.kernels.append(body)
        slug = body.get("slug", "")
        self._json(200, {"ref": f"/code/{slug}", "url": f"{self.fake.url}/code/{slug}",
                         "versionNumber": len(self.fake.kernels), "error": "", **self.fake.kernel_response})

    def _introspect(self, body: dict) -> None:
        self.fake.log(what="introspect")
        active = bool(self.fake.token) and body.get("token") == self.fake.token
        self._json(200, {"active": active, "username": self.fake.username if active else ""})

    def _download_data_files(self, body: dict) -> None:
        competition = body.get("competitionName", "")
        self.fake.log(what="DownloadDataFiles", competition=competition, auth=self.headers.get("Authorization"))
        if not self.fake.authorized(self.headers.get("Authorization")) or self.fake.fail_with == 401:
            return self._error(401, "Unauthenticated")
        if self.fake.fail_with == 403:
            return self._error(403, self.fake.forbidden_message)
        if competition not in self.fake.archives:
            return self._error(404, "Competition not found")
        self.send_response(302)
        self.send_header("Location", f"{self.fake.url}/storage/{competition}.zip?sig=fake-signature")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _archive(self, competition: str) -> None:
        data = self.fake.archives.get(competition)
        if data is None:
            return self._error(404, "No such object")
        etag = self.fake.etag(competition)
        start = self._range_start(etag)
        self.fake.log(what="archive", competition=competition, range=self.headers.get("Range"), start=start)
        if start >= len(data) and start > 0:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.end_headers()
            return
        self.send_response(206 if start else 200)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(len(data) - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", formatdate(self.fake.last_modified, usegmt=True))
        self.end_headers()
        body = data[start:]
        try:
            if self.fake.drop_after is not None:
                cut, self.fake.drop_after = self.fake.drop_after, None  # drop once; the rerun gets it all
                self.wfile.write(body[:cut])
                self.connection.shutdown(socket.SHUT_RDWR)  # mid-body, as a flaky network would
                self.close_connection = True
                return
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped reading (e.g. it only wanted the headers): its choice

    def _range_start(self, etag: str) -> int:
        """Where a `Range: bytes=N-` request starts; 0 (whole object) if absent or If-Range is stale."""
        header = self.headers.get("Range", "")
        if not header.startswith("bytes=") or not header.endswith("-"):
            return 0
        if_range = self.headers.get("If-Range")
        if if_range and if_range not in (etag, formatdate(self.fake.last_modified, usegmt=True)):
            return 0
        return int(header[len("bytes="):-1])


@contextlib.contextmanager
def port_lock():
    """Hold the machine-wide lock for port 7777 (waits for another test run to let go)."""
    with open(LOCK_FILE, "w") as handle:
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.skip(f"port {PORT} stayed locked by another test run for {LOCK_WAIT_S} s ({LOCK_FILE})")
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def port_is_free() -> bool:
    with socket.socket() as probe:
        return probe.connect_ex((HOST, PORT)) != 0


@contextlib.contextmanager
def serving(fake: FakeKaggle):
    """Run the fake on 127.0.0.1:7777 for the duration of the block."""
    with port_lock():
        try:
            server = ThreadingHTTPServer((HOST, PORT), _Handler)
        except OSError as e:
            pytest.skip(
                f"port {PORT} is busy ({e}); kagglesdk's TEST environment only talks to localhost:{PORT}, "
                "so the fake Kaggle server cannot start. Stop whatever listens there and rerun."
            )
        server.daemon_threads = True
        server.fake = fake  # type: ignore[attr-defined]
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        try:
            yield fake
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)


# ---------------------------------------------------------------- the client's side: credentials in tmp

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def import_kaggle_offline(home: Path, username: str, key: str) -> None:
    """`import kaggle` authenticates at import time: do it once, offline and quietly, with fake credentials."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {"HOME": str(home), "KAGGLE_CONFIG_DIR": str(home / "kaggle"),
                            "KAGGLE_USERNAME": username, "KAGGLE_KEY": key}.items():
            mp.setenv(name, value)
        mp.delenv("KAGGLE_API_TOKEN", raising=False)
        import kaggle  # noqa: F401


def fake_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, username: str, key: str) -> Path:
    """Fake credentials in the environment, HOME and the kaggle config in tmp_path, the client pointed
    at this fake (kagglesdk's TEST environment, no proxy for localhost); returns an empty work folder."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(home / "kaggle-config"))
    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "TEST")
    monkeypatch.setenv("KAGGLE_USERNAME", username)
    monkeypatch.setenv("KAGGLE_KEY", key)
    for name in ("KAGGLE_API_TOKEN", "VERBOSE", "VERBOSE_OUTPUT", "XDG_CONFIG_HOME", *PROXY_VARIABLES):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    work = tmp_path / "work"
    work.mkdir()
    return work
