"""Push a saved model folder to the Hugging Face Hub, with checks, retries and no token leaks.

`push_folder` validates everything it can before touching the network (folder,
repo id, revision, quality gates, token), then runs `create_repo` (+ branch) and
`upload_folder` through huggingface_hub's own client. The whole push is retried
on transient failures (HTTP 5xx/408/429, connection errors, timeouts) with
exponential backoff; authentication and permission failures are reported at once.
A push is reported as done only after the Hub confirmed the commit.

Notes on huggingface_hub (checked against 2.4):
- HF_ENDPOINT, HF_HUB_OFFLINE and HF_HUB_DISABLE_XET are read into
  `huggingface_hub.constants` at import time. `push_folder` re-reads them from the
  environment at call time, passes `endpoint=` explicitly and sets the matching
  constants only for the duration of the push.
- Its shared HTTP client has no timeout (`timeout=None`) and some calls retry
  internally (up to 5 times, sleeping 1-8 s). During a push a client is installed
  whose transport caps every request's timeouts at `timeout` and turns transient
  failures into an exception the library does not retry, so `max_retries` and
  `timeout` mean what they say. The previous client factory is restored after.
- With `hf_xet` installed uploads go through Xet (its own Rust HTTP stack, not
  bounded by `timeout`); `xet=False` or `HF_HUB_DISABLE_XET=1` selects the HTTP
  path (preupload, LFS batch, PUT of the blobs, commit).
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple
from urllib.parse import urlsplit

from .errors import UserError

DEFAULT_ENDPOINT = "https://huggingface.co"

# Never pushed: training caches and checkpoints, lock and temp files (huggingface_hub
# adds its own defaults: .git/, .cache/huggingface/).
PUSH_IGNORE_PATTERNS = (
    ".cache/*",
    "*/.cache/*",
    "checkpoint-*",
    "*/checkpoint-*",
    "*.lock",
    ".tmp*",
    "*/.tmp*",
    "*.tmp",
)

MODEL_MARKERS = ("config.json", "adapter_config.json")

_NAME_RE = re.compile(r"[A-Za-z0-9._-]+")
_REVISION_RE = re.compile(r"[A-Za-z0-9._/-]+")
_TRUE = {"1", "ON", "YES", "TRUE"}
_PUSH_LOCK = threading.Lock()  # the settings a push installs are process-wide


class FileEntry(NamedTuple):
    path: str  # relative, POSIX separators
    size: int  # bytes


@dataclass
class PushResult:
    repo_id: str
    revision: str
    endpoint: str
    url: str  # the repo page at this revision
    commit_url: str | None
    commit_oid: str | None
    files: list[FileEntry] = field(default_factory=list)
    dry_run: bool = False
    private: bool = False
    attempts: int = 0
    new_commit: bool = False  # False for a dry run, or when the Hub already held identical files

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


class PushError(UserError):
    """The push failed. `committed`: False (nothing was committed), True (some commit
    landed before the failure), None (unknown: a commit request got no answer)."""

    def __init__(self, message: str, *, status: int | None = None, attempts: int = 0, committed: bool | None = False):
        super().__init__(message)
        self.status = status
        self.attempts = attempts
        self.committed = committed


# --------------------------------------------------------------------------- gates


def _lookup(obj: Any, parts: list[str]) -> tuple[bool, Any]:
    """Find a dotted metric path in nested dicts; keys may themselves contain dots."""
    if not parts:
        return True, obj
    if not isinstance(obj, dict):
        return False, None
    for k in range(len(parts), 0, -1):
        key = ".".join(parts[:k])
        if key in obj:
            found, value = _lookup(obj[key], parts[k:])
            if found:
                return True, value
        if k == len(parts) and f"{key},none" in obj:  # lm-eval metric keys carry a filter suffix
            return True, obj[f"{key},none"]
    return False, None


def check_gates(results: dict | None, gates: dict[str, float] | None) -> list[str]:
    """Return one message per failing gate (empty list: all gates pass).

    A gate maps a metric path such as "json_extraction.held_out.field_f1" or
    "lm_eval.<task>.<metric>" to the minimum value; a metric missing from `results`
    (or not a number) fails its gate.
    """
    failures: list[str] = []
    results = results or {}
    for name, minimum in (gates or {}).items():
        try:
            required = float(minimum)
        except (TypeError, ValueError):
            failures.append(f"{name}: the gate's minimum {minimum!r} is not a number")
            continue
        found, value = _lookup(results, [p for p in str(name).split(".") if p != ""])
        if not found:
            failures.append(f"{name}: missing from the evaluation results (required >= {required:g})")
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            failures.append(f"{name}: value {value!r} is not a number (required >= {required:g})")
        elif math.isnan(value) or value < required:
            failures.append(f"{name} = {value:.4g}, below the required {required:g}")
    return failures


# --------------------------------------------------------------------------- validation


def validate_repo_id(repo_id: str) -> str:
    """Check `NAME` or `ORG/NAME`; return it stripped, or raise UserError."""
    example = "e.g. my-user/qwen2.5-0.5b-json"
    if not isinstance(repo_id, str) or not repo_id.strip():
        raise UserError(f"The repo id is empty: give NAME or ORG/NAME ({example}).")
    rid = repo_id.strip()
    if "://" in rid or rid.startswith(("huggingface.co/", "hf.co/")):
        raise UserError(
            f"The repo id '{rid}' looks like a URL: give only NAME or ORG/NAME ({example}); "
            "use --endpoint / HF_ENDPOINT to choose the Hub server."
        )
    parts = rid.split("/")
    if len(parts) > 2:
        raise UserError(f"The repo id '{rid}' has more than one '/': give NAME or ORG/NAME ({example}).")
    for label, part in zip(("organization" if len(parts) == 2 else "name", "name"), parts):
        if not part:
            raise UserError(f"The repo id '{rid}' has an empty {label}: give NAME or ORG/NAME ({example}).")
        bad = sorted(set(part) - set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-"))
        if bad:
            shown = ", ".join(repr(c) for c in bad)
            raise UserError(
                f"The repo id '{rid}' contains {shown}, which the Hub does not allow: use only letters, "
                f"digits, '-', '_' and '.' in NAME and ORG ({example})."
            )
        if len(part) > 96:
            raise UserError(f"The {label} in repo id '{rid}' is longer than 96 characters: shorten it.")
        if part[0] in ".-" or part[-1] in ".-":
            raise UserError(f"The {label} in repo id '{rid}' must not start or end with '.' or '-': rename it ({example}).")
        if "--" in part or ".." in part:
            raise UserError(f"The repo id '{rid}' contains '--' or '..', which the Hub does not allow: rename it.")
        if part.endswith(".git"):
            raise UserError(f"The repo id '{rid}' must not end with '.git': drop the suffix.")
    return rid


def validate_revision(revision: str | None) -> str:
    if revision is None or revision == "":
        return "main"
    rev = revision.strip()
    if (
        not _REVISION_RE.fullmatch(rev)
        or ".." in rev
        or "//" in rev
        or rev.startswith(("/", "-", ".", "refs/"))
        or rev.endswith(("/", ".", ".lock"))
    ):
        raise UserError(
            f"The revision '{revision}' is not a valid branch name: use letters, digits, '-', '_', '.' "
            "and '/' (not at the start or end, no '..'), e.g. --revision experiment-1."
        )
    if re.fullmatch(r"[0-9a-f]{40}", rev):
        raise UserError(f"The revision '{rev}' is a commit id: a push needs a branch name, e.g. --revision experiment-1.")
    return rev


def validate_folder(folder: Path | str) -> Path:
    path = Path(folder).expanduser()
    if not path.exists():
        raise UserError(
            f"The model folder {path} does not exist: pass the folder written by save_pretrained / "
            "`qwenft merge` (it holds config.json and the *.safetensors weights)."
        )
    if not path.is_dir():
        raise UserError(f"{path} is a file, not a folder: pass the folder that holds config.json and the weights.")
    if not any((path / m).is_file() for m in MODEL_MARKERS):
        raise UserError(
            f"{path} has no config.json, so it does not look like a saved model: pass the folder written "
            "by save_pretrained / `qwenft merge` (config.json + *.safetensors), or an adapter folder "
            "(adapter_config.json)."
        )
    return path.resolve()


def list_push_files(folder: Path, ignore_patterns=PUSH_IGNORE_PATTERNS) -> list[FileEntry]:
    """The files `upload_folder` will send, with the same filtering it applies."""
    from huggingface_hub.utils import filter_repo_objects

    try:
        from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS
    except ImportError:  # pragma: no cover - older huggingface_hub
        DEFAULT_IGNORE_PATTERNS = [".git", ".git/*", "*/.git", "**/.git/**"]
    rel = {p.relative_to(folder).as_posix(): p for p in sorted(folder.glob("**/*")) if p.is_file()}
    kept = filter_repo_objects(rel, ignore_patterns=list(ignore_patterns) + list(DEFAULT_IGNORE_PATTERNS))
    return [FileEntry(r, rel[r].stat().st_size) for r in kept]


# --------------------------------------------------------------------------- settings


def _env_flag(*names: str) -> bool | None:
    """True/False from the first of `names` set in the environment (as huggingface_hub reads them), else None."""
    if not any(n in os.environ for n in names):
        return None
    value = next((os.environ[n] for n in names if os.environ.get(n)), "")
    return value.upper() in _TRUE


def resolve_endpoint(endpoint: str | None = None) -> str:
    if endpoint is None:
        endpoint = os.environ.get("HF_ENDPOINT") or None
    if endpoint is None:
        try:
            from huggingface_hub import constants

            endpoint = constants.ENDPOINT
        except Exception:  # pragma: no cover
            endpoint = DEFAULT_ENDPOINT
    endpoint = str(endpoint).strip().rstrip("/")
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UserError(f"The Hub endpoint '{endpoint}' is not an http(s) URL: set HF_ENDPOINT (or --endpoint) to e.g. {DEFAULT_ENDPOINT}.")
    return endpoint


def resolve_token(token: str | None = None) -> tuple[str | None, str]:
    """(token, where it came from). Never log the token itself."""
    if token and token.strip():
        return token.strip(), "argument"
    env = os.environ.get("HF_TOKEN", "").strip()
    if env:
        return env, "HF_TOKEN"
    try:
        from huggingface_hub import get_token

        saved = get_token()
    except Exception:
        saved = None
    if saved and saved.strip():
        return saved.strip(), "saved login"
    return None, "none"


def _offline_now() -> bool:
    env = _env_flag("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    if env is not None:
        return env
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover
        return False


def _xet_wanted(xet: bool | None) -> bool:
    if xet is not None:
        return bool(xet)
    disabled = _env_flag("HF_HUB_DISABLE_XET")
    if disabled is None:
        from huggingface_hub import constants

        disabled = bool(getattr(constants, "HF_HUB_DISABLE_XET", False))
    return not disabled


def _scrubber(token: str | None) -> Callable[[str], str]:
    bearer = re.compile(r"(?i)\b(bearer\s+)[^\s'\",;]+")

    def scrub(text: Any) -> str:
        s = str(text)
        if token:
            s = s.replace(token, "***")
        return bearer.sub(r"\1***", s)

    return scrub


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"  # pragma: no cover


# --------------------------------------------------------------------------- HTTP guard


class _Transient(Exception):
    """A failure worth retrying (raised inside huggingface_hub's client; it does not retry it)."""

    def __init__(self, reason: str, *, status: int | None = None, retry_after: float | None = None, ambiguous: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retry_after = retry_after
        self.ambiguous = ambiguous  # a commit request whose outcome is unknown


def _is_transient_status(status: int) -> bool:
    return status in (408, 425, 429) or (500 <= status <= 599 and status != 501)


class _PushState:
    def __init__(self):
        self.lock = threading.Lock()
        self.commits_confirmed = 0  # commit responses with 2xx (all attempts)
        self.ambiguous_commit = False  # some commit request got no answer


def _is_commit_request(request) -> bool:
    return request.method == "POST" and re.search(r"/api/[a-z]+s/.+/commit/[^/]+$", request.url.path or "") is not None


def _make_guard_transport(httpx_mod, inner, timeout: float, state: _PushState):
    class GuardTransport(httpx_mod.BaseTransport):
        def handle_request(self, request):
            limits = dict(request.extensions.get("timeout") or {})
            for key in ("connect", "read", "write", "pool"):
                value = limits.get(key)
                limits[key] = timeout if value is None else min(float(value), timeout)
            request.extensions["timeout"] = limits
            what = f"{request.method} {request.url.path}"
            is_commit = _is_commit_request(request)
            try:
                response = inner.handle_request(request)
            except httpx_mod.TimeoutException:
                if is_commit:
                    with state.lock:
                        state.ambiguous_commit = True
                raise _Transient(f"no answer within {timeout:g} s to {what}", ambiguous=is_commit) from None
            except httpx_mod.TransportError as exc:
                sent = not isinstance(exc, httpx_mod.ConnectError)
                if is_commit and sent:
                    with state.lock:
                        state.ambiguous_commit = True
                raise _Transient(
                    f"connection error on {what} ({type(exc).__name__}: {exc})", ambiguous=is_commit and sent
                ) from None
            status = response.status_code
            if _is_transient_status(status):
                message = ""
                try:
                    response.read()
                    message = _server_message(response)
                except Exception:
                    pass
                finally:
                    response.close()
                retry_after = None
                ra = response.headers.get("Retry-After", "")
                if ra.strip().isdigit():
                    retry_after = float(ra.strip())
                detail = f": {message}" if message else ""
                # A gateway error (502/504) on a commit may hide a commit the backend did apply.
                ambiguous = is_commit and status in (502, 504)
                if ambiguous:
                    with state.lock:
                        state.ambiguous_commit = True
                raise _Transient(
                    f"HTTP {status} from {what}{detail}", status=status, retry_after=retry_after, ambiguous=ambiguous
                )
            if is_commit and 200 <= status < 300:
                with state.lock:
                    state.commits_confirmed += 1
            return response

        def close(self):
            inner.close()

    return GuardTransport()


def _server_message(response) -> str:
    try:
        data = json.loads(response.content or b"{}")
        if isinstance(data, dict) and data.get("error"):
            return str(data["error"])[:300]
    except Exception:
        pass
    header = response.headers.get("X-Error-Message")
    if header:
        return header[:300]
    try:
        text = response.text.strip()
        if text and "<html" not in text.lower():
            return text[:300]
    except Exception:
        pass
    return ""


@contextmanager
def _hub_settings(endpoint: str, timeout: float, use_xet: bool, state: _PushState):
    """Point huggingface_hub at `endpoint` with bounded, non-retrying HTTP for one push."""
    from huggingface_hub import constants
    from huggingface_hub.utils import _http

    httpx_mod = getattr(_http, "httpx2", None) or getattr(_http, "httpx", None)
    set_factory = getattr(_http, "set_client_factory", None)
    previous_factory = getattr(_http, "_GLOBAL_CLIENT_FACTORY", None) or getattr(_http, "default_client_factory", None)

    saved = {
        name: getattr(constants, name)
        for name in ("HF_HUB_OFFLINE", "HF_HUB_DISABLE_XET", "ENDPOINT", "HUGGINGFACE_CO_URL_TEMPLATE")
        if hasattr(constants, name)
    }
    constants.HF_HUB_OFFLINE = False
    constants.HF_HUB_DISABLE_XET = not use_xet
    constants.ENDPOINT = endpoint
    constants.HUGGINGFACE_CO_URL_TEMPLATE = endpoint + "/{repo_id}/resolve/{revision}/{filename}"

    def factory():
        client = previous_factory()
        client.timeout = httpx_mod.Timeout(timeout)
        if getattr(client, "_transport", None) is not None:
            client._transport = _make_guard_transport(httpx_mod, client._transport, timeout, state)
        mounts = getattr(client, "_mounts", None)
        if isinstance(mounts, dict):
            for pattern, transport in list(mounts.items()):
                if transport is not None:
                    mounts[pattern] = _make_guard_transport(httpx_mod, transport, timeout, state)
        return client

    guarded = httpx_mod is not None and set_factory is not None and previous_factory is not None
    if guarded:
        set_factory(factory)
    try:
        yield
    finally:
        if guarded:
            set_factory(previous_factory)
        for name, value in saved.items():
            setattr(constants, name, value)


def _find_transient(exc: BaseException) -> _Transient | None:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, _Transient):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


# --------------------------------------------------------------------------- push


def push_folder(
    folder: Path | str,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    dry_run: bool = False,
    max_retries: int = 4,
    backoff: float = 1.0,
    timeout: float = 30.0,
    endpoint: str | None = None,
    gates: dict[str, float] | None = None,
    results: dict | None = None,
    force: bool = False,
    commit_message: str | None = None,
    xet: bool | None = None,
    log: Callable[[str], Any] = print,
) -> PushResult:
    """Push `folder` (a saved model) to the Hub repo `repo_id` and return what was pushed.

    `max_retries` is the total number of attempts for the whole push (create repo,
    branch, upload, commit); transient failures wait `backoff * 2**(n-1)` seconds
    between attempts. Each HTTP request gets at most `timeout` seconds per
    connect/read/write. Raises UserError (PushError for failures at the Hub).
    """
    # 1. Everything that needs no network.
    path = validate_folder(folder)
    rid = validate_repo_id(repo_id)
    rev = validate_revision(revision)
    if not isinstance(max_retries, int) or max_retries < 1:
        raise UserError(f"max_retries must be a whole number >= 1 (total attempts), not {max_retries!r}.")
    if not (isinstance(timeout, (int, float)) and timeout > 0):
        raise UserError(f"timeout must be a positive number of seconds, not {timeout!r}.")
    if not (isinstance(backoff, (int, float)) and backoff >= 0):
        raise UserError(f"backoff must be >= 0 seconds, not {backoff!r}.")
    hub = resolve_endpoint(endpoint)
    tok, token_source = resolve_token(token)
    scrub = _scrubber(tok)

    def say(msg: str) -> None:
        log(scrub(msg))

    if gates:
        failures = check_gates(results, gates)
        if failures and not force:
            why = " (no evaluation results were given)" if not results else ""
            raise UserError(
                f"Refusing to push to {rid}: {len(failures)} of {len(gates)} quality gate(s) failed{why}: "
                + "; ".join(failures)
                + ". Improve the model or lower the gates, or pass --force to push anyway."
            )
        if failures:
            say(f"WARNING: pushing despite {len(failures)} failed quality gate(s) (--force): " + "; ".join(failures))
        else:
            say(f"quality gates passed ({len(gates)}).")

    files = list_push_files(path)
    if not files:
        raise UserError(f"Nothing to push: every file in {path} is excluded ({', '.join(PUSH_IGNORE_PATTERNS)}).")
    total = sum(f.size for f in files)
    where = f"{hub}/{rid}@{rev}" + (" (private)" if private else "")
    repo_url = f"{hub}/{rid}" + (f"/tree/{rev}" if rev != "main" else "")

    if dry_run:
        say(f"dry run: would push {len(files)} files ({_human(total)}) from {path} to {where}")
        width = max(len(f.path) for f in files)
        for f in files:
            say(f"  {f.path.ljust(width)}  {_human(f.size):>9}")
        if "/" not in rid:
            say(f"  (no namespace given: the repo would go under the token owner's user, {hub}/<user>/{rid})")
        say("  token: " + (f"found ({token_source})" if tok else "MISSING: set HF_TOKEN or run `hf auth login` before a real push"))
        return PushResult(rid, rev, hub, repo_url, None, None, files, dry_run=True, private=private)

    if tok is None:
        raise UserError(
            f"No Hugging Face token found for pushing to {rid}: set HF_TOKEN to a token with write access "
            "(https://huggingface.co/settings/tokens) or run `hf auth login`."
        )
    if _offline_now():
        raise UserError(
            "Offline mode is on (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE), so nothing can be pushed: "
            "set HF_HUB_OFFLINE=0 (or unset it) to push; --dry-run works offline."
        )

    # 2. The push itself.
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    try:
        from qwenft import __version__ as qv
    except Exception:  # pragma: no cover
        qv = "0"
    use_xet = _xet_wanted(xet)
    state = _PushState()
    message = commit_message or f"Upload {path.name} with qwenft"
    say(f"pushing {len(files)} files ({_human(total)}) to {where}")

    def outcome() -> tuple[str, bool | None]:
        if state.commits_confirmed:
            return (
                f"{state.commits_confirmed} commit(s) reached {rid} before the failure, so it may hold part "
                "of the upload: run the push again to complete it",
                True,
            )
        if state.ambiguous_commit:
            return (
                f"a commit request got no answer, so it may or may not have been applied: check {repo_url}",
                None,
            )
        return f"nothing was committed to {rid}", False

    with _PUSH_LOCK, _hub_settings(hub, float(timeout), use_xet, state):
        api = HfApi(endpoint=hub, token=tok, library_name="qwenft", library_version=qv)
        attempt = 0
        while True:
            attempt += 1
            commits_before = state.commits_confirmed
            try:
                created = api.create_repo(rid, private=private, exist_ok=True)
                full_id = getattr(created, "repo_id", None) or rid
                if rev != "main":
                    api.create_branch(full_id, branch=rev, exist_ok=True)
                info = api.upload_folder(
                    repo_id=full_id,
                    folder_path=str(path),
                    revision=rev,
                    commit_message=message,
                    ignore_patterns=list(PUSH_IGNORE_PATTERNS),
                )
            except Exception as exc:  # noqa: BLE001 - classified below
                transient = _find_transient(exc)
                if transient is None:
                    raise _permanent_error(exc, rid, hub, attempt, outcome, scrub, HfHubHTTPError) from None
                if attempt >= max_retries:
                    what, committed = outcome()
                    raise PushError(
                        scrub(
                            f"Push to {rid} on {hub} failed after {attempt} attempt(s): {transient.reason}; {what}. "
                            "The Hub may be down or slow: try again later (a larger timeout or more retries may help)."
                        ),
                        status=transient.status,
                        attempts=attempt,
                        committed=committed,
                    ) from None
                wait = backoff * 2 ** (attempt - 1)
                if transient.retry_after is not None:
                    wait = max(wait, min(transient.retry_after, 60.0))
                wait = min(wait, 60.0)
                say(f"attempt {attempt}/{max_retries} failed: {transient.reason}; retrying in {wait:.2g} s")
                time.sleep(wait)
                continue
            break

    oid = getattr(info, "oid", None)
    commit_url = getattr(info, "commit_url", None) or (str(info) if info else None)
    if not oid:
        raise PushError(
            scrub(f"The Hub did not confirm a commit for {rid} (no commit id in its answer); check {repo_url}."),
            attempts=attempt,
            committed=None,
        )
    new_commit = state.commits_confirmed > commits_before
    repo_url = f"{hub}/{full_id}" + (f"/tree/{rev}" if rev != "main" else "")
    if new_commit:
        say(f"pushed {len(files)} files to {repo_url} (commit {oid[:7]})")
    else:
        say(f"nothing new to push: {repo_url} already holds these {len(files)} files (commit {oid[:7]})")
    return PushResult(
        full_id, rev, hub, repo_url, commit_url, oid, files,
        dry_run=False, private=private, attempts=attempt, new_commit=new_commit,
    )


def _permanent_error(exc, rid, hub, attempt, outcome, scrub, http_error_cls) -> PushError:
    what, committed = outcome()
    status = None
    response = getattr(exc, "response", None)
    if isinstance(exc, http_error_cls) and response is not None:
        status = response.status_code
        try:
            request = response.request
            during = f" ({request.method} {request.url.path})"
        except Exception:
            during = ""
        server = getattr(exc, "server_message", None) or _server_message(response)
        detail = f": {server}" if server else ""
        if status == 401:
            text = (
                f"Push to {rid} failed: authentication failed (401): the token was rejected by {hub}{during}. "
                "Set HF_TOKEN to a valid token with write access or run `hf auth login`; "
                f"{what}."
            )
        elif status == 403:
            ns = rid.split("/")[0] if "/" in rid else "your user"
            text = (
                f"Push to {rid} failed: permission denied (403) by {hub}{during}{detail}. The token is valid but "
                f"may not write there: use a token with write access to '{ns}' (fine-grained tokens need write "
                f"permission on it) or push under your own user; {what}."
            )
        elif status == 404:
            text = (
                f"Push to {rid} failed: not found (404) at {hub}{during}{detail}. Check the repo id (its "
                f"organization must exist and you must belong to it), the revision and the endpoint; {what}."
            )
        else:
            text = f"Push to {rid} failed: the Hub refused it (HTTP {status}){during}{detail}; {what}."
    else:
        if isinstance(exc, (ValueError, OSError, RuntimeError)):
            text = f"Push to {rid} on {hub} failed: {type(exc).__name__}: {exc}; {what}."
        else:
            text = f"Push to {rid} on {hub} failed with an unexpected {type(exc).__name__}: {exc}; {what}."
        if "xet" in str(exc).lower():
            text += (
                " The upload went through Xet storage; if this Hub endpoint does not support it, "
                "set HF_HUB_DISABLE_XET=1 to use the plain HTTP upload."
            )
    return PushError(scrub(text), status=status, attempts=attempt, committed=committed)


# --------------------------------------------------------------------------- CLI


def cli_push(a) -> int:
    """`qwenft push FOLDER --repo-id ID [--private] [--revision R] [--dry-run] [--force]`.

    Optional attributes on `a` (used when present): token, endpoint, timeout,
    max_retries, gates (dict), results (dict or path to a JSON file).
    """
    results = getattr(a, "results", None)
    if isinstance(results, (str, Path)):
        rp = Path(results)
        try:
            results = json.loads(rp.read_text())
        except FileNotFoundError:
            raise UserError(f"The evaluation results file {rp} does not exist.") from None
        except ValueError as exc:
            raise UserError(f"The evaluation results file {rp} is not valid JSON ({exc}).") from None
    kwargs = {}
    for name in ("token", "endpoint", "timeout", "max_retries"):
        value = getattr(a, name, None)
        if value is not None:
            kwargs[name] = value
    push_folder(
        Path(a.folder),
        a.repo_id,
        private=bool(getattr(a, "private", False)),
        revision=getattr(a, "revision", None),
        dry_run=bool(getattr(a, "dry_run", False)),
        gates=getattr(a, "gates", None) or None,
        results=results,
        force=bool(getattr(a, "force", False)),
        **kwargs,
    )
    return 0


__all__ = [
    "FileEntry",
    "PushError",
    "PushResult",
    "PUSH_IGNORE_PATTERNS",
    "check_gates",
    "cli_push",
    "list_push_files",
    "push_folder",
    "resolve_endpoint",
    "resolve_token",
    "validate_folder",
    "validate_repo_id",
    "validate_revision",
]
