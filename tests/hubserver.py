"""A small fake Hugging Face Hub: a real HTTP server on 127.0.0.1 for tests.

It implements the part of the Hub HTTP API that `huggingface_hub` (2.x, non-Xet
path) uses to upload a folder and that `hf_hub_download` / transformers'
`from_pretrained` use to download it back:

    POST /api/repos/create                          create a repo (409 if it exists)
    POST /api/validate-yaml                         README metadata check (always OK)
    GET  /api/whoami-v2                             who the token belongs to
    GET  /api/models/{repo}[/revision/{rev}]        model info (sha, siblings)
    GET  /api/models/{repo}/refs                    branches
    POST /api/models/{repo}/branch/{branch}         create a branch
    POST /api/models/{repo}/preupload/{rev}         upload mode per file (lfs/regular) + remote oid
    POST /api/models/{repo}/commit/{rev}            ndjson commit (header, file, lfsFile, deletedFile/Folder)
    GET  /api/models/{repo}/tree/{rev}[/{path}]     file listing
    POST /api/models/{repo}/paths-info/{rev}        info on given paths
    POST /{repo}.git/info/lfs/objects/batch         LFS batch API (basic transfer)
    PUT  /_lfs/{ticket}                             blob upload URL handed out by the batch API
    HEAD/GET /{repo}/resolve/{rev}/{path}           file download (ETag, X-Repo-Commit, X-Linked-*)

Everything lives in memory. Authentication: requests carry `Authorization:
Bearer <token>`; a wrong token always gets 401, writes need the valid token
(401 without one, 403 for a token listed in `read_only_tokens`), public repos are
readable anonymously, private ones only with the valid token. The token value is
kept only to compare against; request records say only whether an
Authorization header was present and whether it was accepted.

Fault injection: `fail_next(n, status, kind=None)`, `delay_next(n, seconds,
kind=None)`, `reject_token = True`. `kind` names an endpoint (see `KINDS`).

Only the standard library is used. Use the `hub_server` pytest fixture, or
`FakeHub().start()` / `.stop()`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

TEST_TOKEN = "hf_test_SECRET_123abc"
TEST_USER = "testuser"

KINDS = (
    "create",
    "validate_yaml",
    "whoami",
    "info",
    "refs",
    "branch",
    "preupload",
    "commit",
    "tree",
    "paths_info",
    "lfs_batch",
    "lfs_upload",
    "resolve",
    "agent_harnesses",
    "unknown",
)

# Paths stored as LFS even when small (like the Hub's default .gitattributes).
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack", ".onnx", ".npy", ".zip")
LFS_THRESHOLD = 10 * 1024 * 1024
GITATTRIBUTES = "".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n" for s in LFS_SUFFIXES).encode()


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class StoredFile:
    content: bytes
    lfs: bool

    @property
    def size(self) -> int:
        return len(self.content)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    @property
    def blob_id(self) -> str:
        if self.lfs:  # git blob of the LFS pointer file, as on the Hub
            pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {self.size}\n"
            return git_sha1(pointer.encode())
        return git_sha1(self.content)

    @property
    def preupload_oid(self) -> str:
        # What huggingface_hub compares against its local oid (sha256 for LFS, git sha1 otherwise).
        return self.sha256 if self.lfs else git_sha1(self.content)


@dataclass
class Commit:
    oid: str
    parent: str | None
    summary: str
    description: str
    files: dict[str, StoredFile]
    date: str


@dataclass
class Repo:
    repo_id: str
    private: bool
    visibility: str | None
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)
    created_at: str = ""


@dataclass
class RecordedRequest:
    method: str
    path: str  # path without the query string
    kind: str
    query: str
    authorization: bool  # an Authorization header was sent
    auth_ok: bool | None  # it carried the valid token (None: no header)
    status: int = 0
    body_size: int = 0


@dataclass
class _Fault:
    kind: str | None
    remaining: int
    status: int | None = None
    delay: float | None = None
    retry_after: float | None = None


class _HTTPError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None, extra=None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}
        self.extra = extra or {}  # more JSON fields in the error body


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


class FakeHub:
    """In-memory Hub behind a ThreadingHTTPServer on 127.0.0.1 (random port)."""

    def __init__(
        self,
        token: str = TEST_TOKEN,
        user: str = TEST_USER,
        read_only_tokens: tuple[str, ...] = (),
        orgs: tuple[str, ...] = ("test-org",),
    ):
        self._token = token
        self.user = user
        self._read_only_tokens = set(read_only_tokens)
        self.orgs = set(orgs)
        self.reject_token = False
        self.repos: dict[str, Repo] = {}
        self.lfs_store: dict[str, bytes] = {}  # sha256 -> content
        self.requests: list[RecordedRequest] = []
        self._tickets: dict[str, tuple[str, int]] = {}
        self._faults: list[_Fault] = []
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "FakeHub":
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        server.block_on_close = False
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "FakeHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "server not started"
        return self._server.server_address[1]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------ fault injection
    def fail_next(self, n: int = 1, status: int = 500, kind: str | None = None, retry_after: float | None = None):
        """The next `n` requests (of endpoint `kind`, or any) fail with `status`."""
        self._check_kind(kind)
        with self._lock:
            self._faults.append(_Fault(kind=kind, remaining=n, status=status, retry_after=retry_after))

    def delay_next(self, n: int = 1, seconds: float = 1.0, kind: str | None = None):
        """The next `n` requests (of endpoint `kind`, or any) wait `seconds` before being handled.

        A delayed request is handled normally afterwards (like a slow Hub), unless the
        server stops meanwhile, in which case it is dropped unanswered.
        """
        self._check_kind(kind)
        with self._lock:
            self._faults.append(_Fault(kind=kind, remaining=n, delay=seconds))

    def add_read_only_token(self, token: str) -> None:
        """Accept `token` for reads only: writes with it get 403."""
        self._read_only_tokens.add(token)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    @staticmethod
    def _check_kind(kind):
        if kind is not None and kind not in KINDS:
            raise ValueError(f"unknown request kind {kind!r}; known: {KINDS}")

    def _take_fault(self, kind: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                # A fault for any kind skips huggingface_hub's side-channel registry probe,
                # which it makes at most once per process and whose failure it ignores.
                if fault.remaining > 0 and (fault.kind == kind or (fault.kind is None and kind != "agent_harnesses")):
                    fault.remaining -= 1
                    return fault
            return None

    # ------------------------------------------------------------ inspection
    def requests_of(self, kind: str) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.kind == kind]

    def reset_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    def repo(self, repo_id: str) -> Repo:
        return self.repos[repo_id]

    def head(self, repo_id: str, revision: str = "main") -> Commit:
        repo = self.repos[repo_id]
        return repo.commits[repo.branches[revision]]

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        return {p: f.content for p, f in self.head(repo_id, revision).files.items()}

    def commit_count(self, repo_id: str, revision: str = "main") -> int:
        """Number of commits reachable from `revision` (the repo's initial commit included)."""
        repo = self.repos[repo_id]
        oid, n = repo.branches[revision], 0
        while oid is not None:
            n += 1
            oid = repo.commits[oid].parent
        return n

    # ------------------------------------------------------------ auth
    def _auth(self, header: str | None) -> bool | None:
        if header is None:
            return None
        if self.reject_token:
            return False
        parts = header.split(None, 1)
        if len(parts) != 2 or parts[0].lower() != "bearer":
            return False
        return secrets.compare_digest(parts[1].strip(), self._token) or parts[1].strip() in self._read_only_tokens

    def _is_read_only(self, header: str | None) -> bool:
        if header is None:
            return False
        value = header.split(None, 1)[-1].strip()
        return value in self._read_only_tokens

    def _require_write(self, req) -> None:
        if req.auth_ok is None:
            raise _HTTPError(401, "You must be authenticated to access this resource.", "Unauthorized")
        if req.auth_ok is False:
            raise _HTTPError(401, "Invalid credentials in Authorization header", "Unauthorized")
        if req.read_only:
            raise _HTTPError(403, "You don't have the rights to write to this namespace (read-only token).")

    def _require_read(self, req, repo: Repo) -> None:
        if req.auth_ok is False:
            raise _HTTPError(401, "Invalid credentials in Authorization header", "Unauthorized")
        if repo.private and not req.auth_ok:
            raise _HTTPError(404, "Repository not found", "RepoNotFound")

    # ------------------------------------------------------------ model
    def _get_repo(self, repo_id: str) -> Repo:
        repo = self.repos.get(repo_id)
        if repo is None:
            raise _HTTPError(404, "Repository not found", "RepoNotFound")
        return repo

    def _resolve_rev(self, repo: Repo, rev: str) -> Commit:
        if rev in repo.branches:
            return repo.commits[repo.branches[rev]]
        if re.fullmatch(r"[0-9a-f]{40}", rev) and rev in repo.commits:
            return repo.commits[rev]
        raise _HTTPError(404, f"Invalid rev id: {rev}", "RevisionNotFound")

    def _new_commit(self, repo: Repo, parent: Commit | None, summary, description, files) -> Commit:
        payload = json.dumps(
            [parent.oid if parent else None, summary, sorted((p, f.blob_id) for p, f in files.items()), time.time_ns()]
        )
        oid = hashlib.sha1(payload.encode()).hexdigest()
        commit = Commit(oid, parent.oid if parent else None, summary, description, dict(files), _now())
        repo.commits[oid] = commit
        return commit

    def _url(self, path: str) -> str:
        return f"{self.endpoint}{path}"


class _Req:
    """Parsed request handed to the route handlers."""

    def __init__(self, method, path, query, headers, body, auth_ok, read_only):
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.auth_ok = auth_ok
        self.read_only = read_only

    def json(self):
        try:
            return json.loads(self.body or b"{}")
        except ValueError as exc:
            raise _HTTPError(400, f"invalid JSON body: {exc}") from None


_REPO = r"(?P<repo>[^/]+(?:/[^/]+)?)"
_ROUTES = [
    ("POST", re.compile(r"^/api/repos/create$"), "create"),
    ("POST", re.compile(r"^/api/validate-yaml$"), "validate_yaml"),
    ("GET", re.compile(r"^/api/whoami-v2$"), "whoami"),
    ("GET", re.compile(r"^/api/agent-harnesses$"), "agent_harnesses"),
    ("GET", re.compile(rf"^/api/models/{_REPO}/refs$"), "refs"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/branch/(?P<branch>[^/]+)$"), "branch"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/preupload/(?P<rev>[^/]+)$"), "preupload"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/commit/(?P<rev>[^/]+)$"), "commit"),
    ("GET", re.compile(rf"^/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<sub>.*))?$"), "tree"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/paths-info/(?P<rev>[^/]+)$"), "paths_info"),
    ("GET", re.compile(rf"^/api/models/{_REPO}/revision/(?P<rev>[^/]+)$"), "info"),
    ("GET", re.compile(rf"^/api/models/{_REPO}$"), "info"),
    ("POST", re.compile(rf"^/{_REPO}\.git/info/lfs/objects/batch$"), "lfs_batch"),
    ("PUT", re.compile(r"^/_lfs/(?P<ticket>[A-Za-z0-9_-]+)$"), "lfs_upload"),
    ("HEAD", re.compile(rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<file>.+)$"), "resolve"),
    ("GET", re.compile(rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<file>.+)$"), "resolve"),
]


def _route(method: str, path: str):
    for m, pattern, kind in _ROUTES:
        if m != method:
            continue
        match = pattern.match(path)
        if match:
            return kind, {k: (unquote(v) if v is not None else None) for k, v in match.groupdict().items()}
    return "unknown", {}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: FakeHub  # set on the per-server subclass
    server_version = "FakeHub/1.0"

    def log_message(self, format, *args):  # keep test output clean
        pass

    def do_GET(self):
        self._handle()

    def do_HEAD(self):
        self._handle()

    def do_POST(self):
        self._handle()

    def do_PUT(self):
        self._handle()

    def do_DELETE(self):
        self._handle()

    # ----------------------------------------------------------- plumbing
    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                line = self.rfile.readline()
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, content_type="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _json(self, status: int, data, headers: dict | None = None):
        self._send(status, json.dumps(data).encode(), headers)

    def _handle(self):
        hub = self.hub
        split = urlsplit(self.path)
        path, query = split.path, split.query
        kind, params = _route(self.command, path)
        auth_header = self.headers.get("Authorization")
        auth_ok = hub._auth(auth_header)
        record = RecordedRequest(
            method=self.command,
            path=path,
            kind=kind,
            query=query,
            authorization=auth_header is not None,
            auth_ok=auth_ok,
        )
        with hub._lock:
            hub.requests.append(record)
        try:
            body = self._read_body()
            record.body_size = len(body)
            fault = hub._take_fault(kind)
            if fault is not None and fault.delay:
                if hub._stopping.wait(fault.delay):
                    self.close_connection = True
                    return
            if fault is not None and fault.status:
                headers = {"Retry-After": int(fault.retry_after)} if fault.retry_after is not None else {}
                record.status = fault.status
                self._json(fault.status, {"error": f"injected failure ({fault.status})"}, headers)
                return
            req = _Req(self.command, path, parse_qs(query), self.headers, body, auth_ok, hub._is_read_only(auth_header))
            handler = getattr(self, f"_h_{kind}")
            with hub._lock:
                status, payload, headers, ctype = handler(req, **params)
            record.status = status
            if isinstance(payload, (bytes, bytearray)):
                self._send(status, bytes(payload), headers, ctype or "application/octet-stream")
            else:
                self._json(status, payload, headers)
        except _HTTPError as err:
            record.status = err.status
            headers = dict(err.headers)
            headers["X-Error-Message"] = err.message
            if err.code:
                headers["X-Error-Code"] = err.code
            try:
                self._json(err.status, {"error": err.message, **err.extra}, headers)
            except OSError:
                self.close_connection = True
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            self.close_connection = True
        except Exception as exc:  # a bug in the fake server: answer 500 with the reason
            record.status = 599
            try:
                self._json(500, {"error": f"fake hub bug: {type(exc).__name__}: {exc}"})
            except OSError:
                pass
            self.close_connection = True

    # ----------------------------------------------------------- endpoints
    def _h_agent_harnesses(self, req):
        # huggingface_hub fetches this registry when it first builds a user agent. Answering
        # 404 keeps it from caching a copy under the user's HF_HOME.
        raise _HTTPError(404, "fake hub: no agent harness registry")

    def _h_unknown(self, req):
        raise _HTTPError(404, f"fake hub: no route for {req.method} {req.path}")

    def _h_create(self, req):
        hub = self.hub
        hub._require_write(req)
        data = req.json()
        name, org = data.get("name"), data.get("organization")
        if data.get("type") not in (None, "model"):
            raise _HTTPError(400, "fake hub only supports model repos")
        if not name:
            raise _HTTPError(400, "missing repo name")
        namespace = org or hub.user
        if namespace != hub.user and namespace not in hub.orgs:
            raise _HTTPError(403, f"You don't have the rights to create a model under the namespace \"{namespace}\"")
        repo_id = f"{namespace}/{name}"
        url = hub._url(f"/{repo_id}")
        if repo_id in hub.repos:
            raise _HTTPError(409, "You already created this model repo", extra={"url": url})
        visibility = data.get("visibility")
        private = bool(data.get("private")) or visibility == "private"
        repo = Repo(repo_id=repo_id, private=private, visibility=visibility, created_at=_now())
        initial = hub._new_commit(repo, None, "initial commit", "", {".gitattributes": StoredFile(GITATTRIBUTES, False)})
        repo.branches["main"] = initial.oid
        hub.repos[repo_id] = repo
        return 200, {"url": url, "name": repo_id, "id": hashlib.md5(repo_id.encode()).hexdigest()[:24]}, {}, None

    def _h_validate_yaml(self, req):
        self.hub._require_write(req)
        return 200, {"errors": [], "warnings": []}, {}, None

    def _h_whoami(self, req):
        hub = self.hub
        if not req.auth_ok:
            raise _HTTPError(401, "Invalid credentials in Authorization header", "Unauthorized")
        role = "read" if req.read_only else "write"
        return (
            200,
            {
                "type": "user",
                "name": hub.user,
                "fullname": "Test User",
                "orgs": [{"name": o, "type": "org"} for o in sorted(hub.orgs)],
                "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": role}},
            },
            {},
            None,
        )

    def _h_refs(self, req, repo):
        hub = self.hub
        r = hub._get_repo(repo)
        hub._require_read(req, r)
        branches = [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": oid} for b, oid in r.branches.items()]
        return 200, {"branches": branches, "converts": [], "tags": []}, {}, None

    def _h_branch(self, req, repo, branch):
        hub = self.hub
        hub._require_write(req)
        r = hub._get_repo(repo)
        if branch in r.branches:
            raise _HTTPError(409, f"Reference refs/heads/{branch} already exists")
        if branch.startswith("refs/") or ".." in branch or not re.fullmatch(r"[A-Za-z0-9._/-]+", branch):
            raise _HTTPError(400, f"Invalid reference for a branch: {branch}")
        start = req.json().get("startingPoint") or "main"
        r.branches[branch] = hub._resolve_rev(r, start).oid
        return 200, {}, {}, None

    def _h_preupload(self, req, repo, rev):
        hub = self.hub
        hub._require_write(req)
        r = hub._get_repo(repo)
        head = hub._resolve_rev(r, rev)
        files = []
        for f in req.json().get("files", []):
            path, size = f["path"], int(f["size"])
            sample = base64.b64decode(f.get("sample", ""))
            lfs = path.endswith(LFS_SUFFIXES) or size >= LFS_THRESHOLD or b"\0" in sample
            existing = head.files.get(path)
            files.append(
                {
                    "path": path,
                    "uploadMode": "lfs" if lfs else "regular",
                    "shouldIgnore": False,
                    "oid": existing.preupload_oid if existing is not None else None,
                }
            )
        return 200, {"files": files, "commitOid": head.oid}, {}, None

    def _h_lfs_batch(self, req, repo):
        hub = self.hub
        hub._require_write(req)
        hub._get_repo(repo)
        data = req.json()
        if data.get("operation") != "upload":
            raise _HTTPError(400, "fake hub only supports LFS uploads")
        objects = []
        for obj in data.get("objects", []):
            oid, size = obj["oid"], int(obj["size"])
            entry = {"oid": oid, "size": size, "authenticated": True}
            if oid not in hub.lfs_store:
                ticket = secrets.token_urlsafe(16)
                hub._tickets[ticket] = (oid, size)
                entry["actions"] = {"upload": {"href": hub._url(f"/_lfs/{ticket}"), "header": {}, "expires_in": 3600}}
            objects.append(entry)
        return 200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}, {}, None

    def _h_lfs_upload(self, req, ticket):
        hub = self.hub
        if ticket not in hub._tickets:  # the ticket in the URL is the credential (like a signed S3 URL)
            raise _HTTPError(403, "invalid or expired upload URL")
        oid, size = hub._tickets[ticket]
        if len(req.body) != size or hashlib.sha256(req.body).hexdigest() != oid:
            raise _HTTPError(400, f"uploaded content does not match oid {oid} / size {size}")
        hub.lfs_store[oid] = req.body
        del hub._tickets[ticket]
        return 200, b"", {"ETag": f'"{oid}"'}, "text/plain"

    def _h_commit(self, req, repo, rev):
        hub = self.hub
        hub._require_write(req)
        r = hub._get_repo(repo)
        if rev not in r.branches:
            raise _HTTPError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        if "create_pr" in req.query:
            raise _HTTPError(400, "fake hub does not support pull requests")
        head = r.commits[r.branches[rev]]
        files = dict(head.files)
        header = None
        for line in req.body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item.get("key"), item.get("value", {})
            if key == "header":
                header = value
            elif key == "file":
                if value.get("encoding") != "base64":
                    raise _HTTPError(400, "only base64 encoding is supported")
                files[value["path"]] = StoredFile(base64.b64decode(value["content"]), False)
            elif key == "lfsFile":
                if value.get("algo", "sha256") != "sha256":
                    raise _HTTPError(400, "only sha256 LFS oids are supported")
                blob = hub.lfs_store.get(value["oid"])
                if blob is None:
                    raise _HTTPError(422, f"LFS file {value['path']} ({value['oid']}) was not uploaded")
                files[value["path"]] = StoredFile(blob, True)
            elif key == "deletedFile":
                if value["path"] not in files:
                    raise _HTTPError(404, "A file with this name doesn't exist", "EntryNotFound")
                del files[value["path"]]
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                for p in [p for p in files if p.startswith(prefix)]:
                    del files[p]
            else:
                raise _HTTPError(400, f"unknown commit operation {key!r}")
        if header is None:
            raise _HTTPError(400, "commit header missing")
        parent_commit = header.get("parentCommit")
        if parent_commit and not head.oid.startswith(parent_commit):
            raise _HTTPError(412, "A commit has happened since. Please refresh and try again.")
        commit = hub._new_commit(r, head, header.get("summary", ""), header.get("description", ""), files)
        r.branches[rev] = commit.oid
        return (
            200,
            {
                "success": True,
                "commitOid": commit.oid,
                "commitUrl": hub._url(f"/{r.repo_id}/commit/{commit.oid}"),
                "commitMessage": commit.summary,
                "pullRequestUrl": None,
            },
            {},
            None,
        )

    def _file_entry(self, path: str, f: StoredFile) -> dict:
        entry = {"type": "file", "oid": f.blob_id, "size": f.size, "path": path}
        if f.lfs:
            entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": 134}
        return entry

    def _h_tree(self, req, repo, rev, sub=None):
        hub = self.hub
        r = hub._get_repo(repo)
        hub._require_read(req, r)
        commit = hub._resolve_rev(r, rev)
        prefix = (sub or "").strip("/")
        recursive = req.query.get("recursive", ["false"])[0].lower() in ("1", "true")
        entries, folders = [], set()
        for path, f in sorted(commit.files.items()):
            if prefix and not path.startswith(prefix + "/"):
                continue
            rest = path[len(prefix) + 1 :] if prefix else path
            if "/" in rest and not recursive:
                folders.add((prefix + "/" if prefix else "") + rest.split("/", 1)[0])
                continue
            entries.append(self._file_entry(path, f))
        entries += [{"type": "directory", "oid": "0" * 40, "size": 0, "path": d} for d in sorted(folders)]
        return 200, entries, {}, None

    def _h_paths_info(self, req, repo, rev):
        hub = self.hub
        r = hub._get_repo(repo)
        hub._require_read(req, r)
        commit = hub._resolve_rev(r, rev)
        ctype = req.headers.get("Content-Type", "")
        if "json" in ctype:
            paths = req.json().get("paths", [])
        else:
            paths = parse_qs(req.body.decode()).get("paths", [])
        out = [self._file_entry(p, commit.files[p]) for p in paths if p in commit.files]
        return 200, out, {}, None

    def _h_info(self, req, repo, rev=None):
        hub = self.hub
        r = hub._get_repo(repo)
        hub._require_read(req, r)
        commit = hub._resolve_rev(r, rev or "main")
        siblings = []
        for path, f in sorted(commit.files.items()):
            sib = {"rfilename": path, "size": f.size, "blobId": f.blob_id}
            if f.lfs:
                sib["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": 134}
            siblings.append(sib)
        info = {
            "_id": hashlib.md5(r.repo_id.encode()).hexdigest()[:24],
            "id": r.repo_id,
            "modelId": r.repo_id,
            "author": r.repo_id.split("/")[0],
            "sha": commit.oid,
            "lastModified": commit.date,
            "createdAt": r.created_at,
            "private": r.private,
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "library_name": "transformers",
            "siblings": siblings,
            "usedStorage": sum(f.size for f in commit.files.values()),
        }
        return 200, info, {}, None

    def _h_resolve(self, req, repo, rev, file):
        hub = self.hub
        r = hub._get_repo(repo)
        hub._require_read(req, r)
        commit = hub._resolve_rev(r, rev)
        f = commit.files.get(file)
        if f is None:
            raise _HTTPError(404, "Entry not found", "EntryNotFound", headers={"X-Repo-Commit": commit.oid})
        etag = f'"{f.sha256}"' if f.lfs else f'"{f.blob_id}"'
        headers = {"ETag": etag, "X-Repo-Commit": commit.oid, "Accept-Ranges": "bytes"}
        if f.lfs:
            headers["X-Linked-Etag"] = etag
            headers["X-Linked-Size"] = f.size
        content, status = f.content, 200
        rng = req.headers.get("Range")
        if rng and req.method == "GET":
            m = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", rng)
            if m:
                start = int(m.group(1)) if m.group(1) else max(0, f.size - int(m.group(2) or 0))
                end = int(m.group(2)) if (m.group(1) and m.group(2)) else f.size - 1
                end = min(end, f.size - 1)
                if start > end:
                    raise _HTTPError(416, "Requested range not satisfiable", headers={"Content-Range": f"bytes */{f.size}"})
                content, status = f.content[start : end + 1], 206
                headers["Content-Range"] = f"bytes {start}-{end}/{f.size}"
        return status, content, headers, "application/octet-stream"


@pytest.fixture
def hub_server():
    """A fresh FakeHub on 127.0.0.1 for one test; valid token is `TEST_TOKEN`."""
    server = FakeHub().start()
    try:
        yield server
    finally:
        server.stop()
