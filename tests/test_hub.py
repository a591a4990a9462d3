"""qwenft.hub: pushes through the real huggingface_hub client to a local fake Hub (tests/hubserver.py)."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # also under --import-mode=importlib

from hubserver import TEST_TOKEN, FakeHub, hub_server  # noqa: E402,F401  (hub_server is a fixture)

from qwenft.errors import UserError  # noqa: E402
from qwenft.hub import PushError, check_gates, push_folder  # noqa: E402

MODEL_FILES = {"README.md", "config.json", "generation_config.json", "model.safetensors"}
JUNK = [".cache/huggingface/x.json", ".cache/other.bin", "checkpoint-5/model.safetensors", "train.lock", ".tmp123", "sub/.tmp-x"]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model, folder): a tiny Qwen2 saved with safetensors + README.md, plus files that must not be pushed."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(1234)
    config = Qwen2Config(
        vocab_size=1000, hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    )
    model = Qwen2ForCausalLM(config).eval()
    folder = tmp_path_factory.mktemp("hubpush") / "merged"
    model.save_pretrained(folder, safe_serialization=True)
    (folder / "README.md").write_text("---\nlicense: apache-2.0\nlibrary_name: transformers\n---\n# tiny test model\n")
    for rel in JUNK:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(b"junk")
    assert MODEL_FILES <= {p.name for p in folder.iterdir()}
    return model, folder


@pytest.fixture
def hub_env(monkeypatch, tmp_path):
    """Environment for a push to the local server, set AFTER huggingface_hub was imported.

    conftest.py sets HF_HUB_OFFLINE=1 before huggingface_hub reads it into its constants;
    qwenft.hub must follow the environment at call time instead of those stale constants.
    No real login may leak in: HF_TOKEN unset and the saved-token paths point at nothing.
    """
    import huggingface_hub  # noqa: F401  (constants now hold the conftest values)
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    for name in ("NO_PROXY", "no_proxy"):  # the fake Hub is on loopback: never through a proxy
        monkeypatch.setenv(name, ",".join(filter(None, [os.environ.get(name), "127.0.0.1", "localhost"])))
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.delenv("HF_OIDC_RESOURCE", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-stored-tokens"))
    return constants


def push(hub: FakeHub, folder, repo_id="testuser/tiny", **kw):
    kw.setdefault("token", TEST_TOKEN)
    kw.setdefault("endpoint", hub.endpoint)
    kw.setdefault("backoff", 0.01)
    kw.setdefault("timeout", 5.0)
    return push_folder(folder, repo_id, **kw)


def _no_token_anywhere(*texts):
    for t in texts:
        assert TEST_TOKEN not in (t or "")


# --------------------------------------------------------------------------- 1. round trip


def test_push_then_from_pretrained_gives_identical_logits(tiny, hub_server, hub_env, monkeypatch, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    model, folder = tiny
    constants = hub_env
    stale = (constants.ENDPOINT, constants.HF_HUB_OFFLINE, constants.HF_HUB_DISABLE_XET)
    assert constants.HF_HUB_OFFLINE is True  # conftest's value, read at import
    monkeypatch.setenv("HF_ENDPOINT", hub_server.endpoint)  # endpoint from the environment, not an argument
    monkeypatch.setenv("HF_TOKEN", TEST_TOKEN)  # token from the environment
    logs: list[str] = []
    from huggingface_hub.utils import _http

    factory_before = _http._GLOBAL_CLIENT_FACTORY

    result = push_folder(folder, "testuser/tiny", backoff=0.01, timeout=5.0, log=logs.append)

    assert not result.dry_run and result.new_commit and result.attempts == 1
    assert result.repo_id == "testuser/tiny" and result.revision == "main"
    assert result.endpoint == hub_server.endpoint
    assert result.commit_oid and len(result.commit_oid) == 40
    assert result.commit_oid == hub_server.head("testuser/tiny").oid
    assert {f.path for f in result.files} == MODEL_FILES
    sizes = {f.path: f.size for f in result.files}
    assert sizes["model.safetensors"] == (folder / "model.safetensors").stat().st_size
    assert logs[-1] == f"pushed 4 files to {hub_server.endpoint}/testuser/tiny (commit {result.commit_oid[:7]})"

    # the files arrived byte for byte (weights through LFS), junk did not
    stored = hub_server.files("testuser/tiny")
    assert set(stored) == MODEL_FILES | {".gitattributes"}
    for name in MODEL_FILES:
        assert stored[name] == (folder / name).read_bytes()
    assert hub_server.head("testuser/tiny").files["model.safetensors"].lfs
    assert hub_server.commit_count("testuser/tiny") == 2  # repo creation + our commit

    # the non-Xet HTTP path, authenticated (blob PUTs go to the upload URL the batch API handed out)
    kinds = [r.kind for r in hub_server.requests]
    for kind in ("create", "preupload", "lfs_batch", "lfs_upload", "commit"):
        assert kind in kinds, kinds
    assert "unknown" not in kinds, [r.path for r in hub_server.requests if r.kind == "unknown"]
    assert all(r.auth_ok for r in hub_server.requests if r.kind not in ("lfs_upload", "agent_harnesses"))

    # huggingface_hub's import-time constants and HTTP client factory are back as they were
    assert (constants.ENDPOINT, constants.HF_HUB_OFFLINE, constants.HF_HUB_DISABLE_XET) == stale
    assert _http._GLOBAL_CLIENT_FACTORY is factory_before

    # download it back with transformers from the same server
    monkeypatch.setattr(constants, "ENDPOINT", hub_server.endpoint)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub_server.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN")  # public repo: anonymous download
    hub_server.reset_requests()
    loaded = AutoModelForCausalLM.from_pretrained("testuser/tiny", cache_dir=tmp_path / "cache").eval()
    assert any(r.kind == "resolve" and r.path.endswith("/model.safetensors") for r in hub_server.requests)
    ids = torch.tensor([[1, 5, 42, 7, 999, 3, 0, 128]])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)

    # the token was written nowhere on disk
    for root in (folder, tmp_path):
        for p in Path(root).rglob("*"):
            if p.is_file():
                assert TEST_TOKEN.encode() not in p.read_bytes(), p


# --------------------------------------------------------------------------- 2. branch, private, idempotent


def test_push_to_branch_private_and_repush_is_a_no_op(tiny, hub_server, hub_env):
    _, folder = tiny
    logs: list[str] = []
    result = push(hub_server, folder, "test-org/tiny-private", private=True, revision="exp-1", log=logs.append)

    repo = hub_server.repo("test-org/tiny-private")
    assert repo.private and repo.visibility == "private"
    create = hub_server.requests_of("create")
    assert len(create) == 1 and create[0].status == 200
    assert len(hub_server.requests_of("branch")) == 1
    assert all(r.path.endswith("/commit/exp-1") for r in hub_server.requests_of("commit"))
    assert set(hub_server.files("test-org/tiny-private", "exp-1")) == MODEL_FILES | {".gitattributes"}
    assert set(hub_server.files("test-org/tiny-private", "main")) == {".gitattributes"}
    assert result.revision == "exp-1" and result.private
    assert result.url == f"{hub_server.endpoint}/test-org/tiny-private/tree/exp-1"
    assert result.commit_oid == hub_server.head("test-org/tiny-private", "exp-1").oid

    # pushing the same folder again: repo and branch exist (409s tolerated), nothing new is committed
    again = push(hub_server, folder, "test-org/tiny-private", private=True, revision="exp-1", log=logs.append)
    assert again.commit_oid == result.commit_oid and not again.new_commit
    assert hub_server.commit_count("test-org/tiny-private", "exp-1") == 2
    assert [r.status for r in hub_server.requests_of("create")] == [200, 409]
    assert "nothing new to push" in logs[-1]


def test_name_without_namespace_goes_under_the_token_user(tiny, hub_server, hub_env):
    _, folder = tiny
    result = push(hub_server, folder, "just-a-name", log=lambda m: None)
    assert result.repo_id == "testuser/just-a-name"
    assert "model.safetensors" in hub_server.files("testuser/just-a-name")


# --------------------------------------------------------------------------- 3. transient failures


@pytest.mark.parametrize("kind,status", [(None, 503), ("preupload", 500), ("commit", 502), ("lfs_upload", 500), ("create", 429)])
def test_transient_failures_are_retried_then_push_succeeds(tiny, hub_server, hub_env, kind, status):
    _, folder = tiny
    logs: list[str] = []
    hub_server.fail_next(2, status=status, kind=kind)
    result = push(hub_server, folder, max_retries=4, log=logs.append)

    assert result.attempts == 3 and result.new_commit
    failed = [r for r in hub_server.requests if r.status == status]
    assert len(failed) == 2
    target = kind or "create"  # with no kind the first requests of each attempt fail
    assert [r.status for r in hub_server.requests_of(target)] == [status, status, 200]
    assert sum("retrying in" in m for m in logs) == 2
    assert logs[0].startswith("pushing 4 files")
    assert logs[-1].startswith("pushed 4 files")
    assert hub_server.commit_count("testuser/tiny") == 2  # exactly one commit despite the retries


@pytest.mark.parametrize("kind", ["commit", "preupload", None])
def test_persistent_5xx_gives_clear_error_and_nothing_is_committed(tiny, hub_server, hub_env, kind):
    _, folder = tiny
    logs: list[str] = []
    hub_server.fail_next(10**6, status=500, kind=kind)
    with pytest.raises(PushError) as exc_info:
        push(hub_server, folder, max_retries=3, log=logs.append)
    err = exc_info.value
    msg = str(err)
    assert "failed after 3 attempt(s)" in msg and "HTTP 500" in msg
    assert "nothing was committed to testuser/tiny" in msg
    assert err.attempts == 3 and err.committed is False and err.status == 500
    assert isinstance(err, UserError)
    assert len(hub_server.requests_of(kind or "create")) == 3
    assert not any(m.startswith("pushed") for m in logs)
    if "testuser/tiny" in hub_server.repos:
        assert hub_server.commit_count("testuser/tiny") == 1  # only the repo's initial commit


def test_connection_refused_is_retried_then_fails(tiny, hub_env):
    import socket

    _, folder = tiny
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    logs: list[str] = []
    with pytest.raises(PushError) as exc_info:
        push_folder(folder, "testuser/tiny", token=TEST_TOKEN, endpoint=f"http://127.0.0.1:{port}",
                    max_retries=2, backoff=0.01, timeout=2.0, log=logs.append)
    msg = str(exc_info.value)
    assert "failed after 2 attempt(s)" in msg and "connection error" in msg and "nothing was committed" in msg
    assert sum("retrying in" in m for m in logs) == 1


def test_xet_false_forces_the_http_path_whatever_the_environment(tiny, hub_server, hub_env, monkeypatch):
    _, folder = tiny
    monkeypatch.delenv("HF_HUB_DISABLE_XET")
    monkeypatch.setattr(hub_env, "HF_HUB_DISABLE_XET", False)
    result = push(hub_server, folder, xet=False, log=lambda m: None)
    assert result.new_commit and hub_server.requests_of("lfs_upload")
    assert hub_env.HF_HUB_DISABLE_XET is False  # restored


# --------------------------------------------------------------------------- 4. timeouts


def test_hanging_server_times_out_is_retried_then_fails_fast(tiny, hub_server, hub_env):
    _, folder = tiny
    hub_server.delay_next(10**6, seconds=30, kind="preupload")
    start = time.monotonic()
    with pytest.raises(PushError) as exc_info:
        push(hub_server, folder, max_retries=3, timeout=0.3, log=lambda m: None)
    elapsed = time.monotonic() - start
    msg = str(exc_info.value)
    assert elapsed < 5, elapsed
    assert "failed after 3 attempt(s)" in msg and "no answer within 0.3 s" in msg
    assert "nothing was committed" in msg and exc_info.value.committed is False
    assert len(hub_server.requests_of("preupload")) == 3


def test_one_slow_answer_is_retried_and_succeeds(tiny, hub_server, hub_env):
    _, folder = tiny
    hub_server.delay_next(1, seconds=30, kind="create")
    result = push(hub_server, folder, max_retries=2, timeout=0.3, log=lambda m: None)
    assert result.attempts == 2 and result.new_commit


def test_commit_without_answer_is_not_reported_as_nothing_pushed(tiny, hub_server, hub_env):
    _, folder = tiny
    hub_server.delay_next(10**6, seconds=30, kind="commit")
    with pytest.raises(PushError) as exc_info:
        push(hub_server, folder, max_retries=2, timeout=0.3, log=lambda m: None)
    msg = str(exc_info.value)
    assert "may or may not have been applied" in msg
    assert "nothing was committed" not in msg
    assert exc_info.value.committed is None


def test_gateway_error_on_commit_is_not_reported_as_nothing_pushed(tiny, hub_server, hub_env):
    _, folder = tiny
    hub_server.fail_next(10**6, status=504, kind="commit")
    with pytest.raises(PushError) as exc_info:
        push(hub_server, folder, max_retries=2, log=lambda m: None)
    assert "may or may not have been applied" in str(exc_info.value)
    assert exc_info.value.committed is None


# --------------------------------------------------------------------------- 5. auth


def test_rejected_token_fails_plainly_without_retries_or_leaks(tiny, hub_server, hub_env, capfd, caplog):
    _, folder = tiny
    caplog.set_level(logging.DEBUG)
    for name in ("huggingface_hub", "httpx2", "httpcore2"):
        caplog.set_level(logging.DEBUG, logger=name)
    hub_server.reject_token = True
    with pytest.raises(PushError) as exc_info:
        push(hub_server, folder, max_retries=4, log=print)
    err = exc_info.value
    msg = str(err)
    assert "authentication failed (401)" in msg and "token was rejected" in msg
    assert "HF_TOKEN" in msg and "hf auth login" in msg
    assert err.status == 401 and err.attempts == 1 and err.committed is False
    assert len(hub_server.requests_of("create")) == 1  # not retried
    assert not hub_server.requests_of("commit")
    out, errout = capfd.readouterr()
    assert caplog.text  # debug logging was on, so the check below means something
    _no_token_anywhere(msg, repr(err), out, errout, caplog.text)
    assert err.__cause__ is None  # the library error (with its request details) is not chained


def test_read_only_token_gets_permission_denied(tiny, hub_server, hub_env):
    _, folder = tiny
    read_only = "hf_readonly_TOKEN_456"
    hub_server.add_read_only_token(read_only)
    with pytest.raises(PushError) as exc_info:
        push(hub_server, folder, token=read_only, log=lambda m: None)
    msg = str(exc_info.value)
    assert "permission denied (403)" in msg and read_only not in msg
    assert exc_info.value.attempts == 1


def test_missing_token_is_a_user_error_before_any_request(tiny, hub_server, hub_env):
    _, folder = tiny
    with pytest.raises(UserError, match="HF_TOKEN.*hf auth login"):
        push(hub_server, folder, token=None)
    assert hub_server.requests == []


def test_offline_mode_refuses_before_any_request(tiny, hub_server, hub_env, monkeypatch):
    _, folder = tiny
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="HF_HUB_OFFLINE"):
        push(hub_server, folder)
    assert hub_server.requests == []


# --------------------------------------------------------------------------- 6. dry run


def test_dry_run_lists_files_and_makes_no_request(tiny, hub_server, hub_env):
    _, folder = tiny
    logs: list[str] = []
    result = push(hub_server, folder, "test-org/x", token=None, revision="v2", private=True, dry_run=True, log=logs.append)
    assert result.dry_run and result.commit_oid is None and not result.new_commit
    assert {f.path for f in result.files} == MODEL_FILES
    assert result.total_bytes == sum((folder / f).stat().st_size for f in MODEL_FILES)
    text = "\n".join(logs)
    assert f"{hub_server.endpoint}/test-org/x@v2 (private)" in text
    for name in MODEL_FILES:
        assert name in text
    for junk in JUNK:
        assert junk not in text
    assert "MISSING" in text  # no token: said, not fatal for a dry run
    assert hub_server.requests == []


# --------------------------------------------------------------------------- 7. gates


RESULTS = {
    "json_extraction": {"held_out": {"field_f1": 0.71, "valid_json": 0.98}},
    "lm_eval": {"ifeval": {"prompt_level_strict_acc,none": 0.31}, "gsm8k.cot": {"exact_match": 0.4}},
}


def test_check_gates():
    assert check_gates(RESULTS, {"json_extraction.held_out.field_f1": 0.7}) == []
    assert check_gates(RESULTS, {"lm_eval.ifeval.prompt_level_strict_acc": 0.3}) == []  # ",none" suffix
    assert check_gates(RESULTS, {"lm_eval.gsm8k.cot.exact_match": 0.4}) == []  # dotted task name
    failures = check_gates(
        RESULTS,
        {
            "json_extraction.held_out.field_f1": 0.8,
            "json_extraction.held_out.valid_json": 0.9,
            "lm_eval.mmlu.acc": 0.2,
            "json_extraction.held_out": 0.5,
        },
    )
    assert len(failures) == 3
    assert "json_extraction.held_out.field_f1 = 0.71, below the required 0.8" in failures[0]
    assert "lm_eval.mmlu.acc: missing" in failures[1]
    assert "json_extraction.held_out: value" in failures[2] and "not a number" in failures[2]
    assert check_gates(None, {"a.b": 1}) == ["a.b: missing from the evaluation results (required >= 1)"]
    assert check_gates({"a": float("nan")}, {"a": 0}) != []


def test_failing_gates_refuse_push_and_force_overrides(tiny, hub_server, hub_env):
    _, folder = tiny
    gates = {"json_extraction.held_out.field_f1": 0.8, "lm_eval.mmlu.acc": 0.25, "json_extraction.held_out.valid_json": 0.9}
    with pytest.raises(UserError) as exc_info:
        push(hub_server, folder, gates=gates, results=RESULTS)
    msg = str(exc_info.value)
    assert "2 of 3 quality gate(s) failed" in msg
    assert "json_extraction.held_out.field_f1 = 0.71" in msg and "0.8" in msg
    assert "lm_eval.mmlu.acc: missing" in msg
    assert "--force" in msg
    assert hub_server.requests == []

    with pytest.raises(UserError, match="no evaluation results"):
        push(hub_server, folder, gates=gates, results=None)

    logs: list[str] = []
    result = push(hub_server, folder, gates=gates, results=RESULTS, force=True, log=logs.append)
    assert result.new_commit
    assert any("despite 2 failed quality gate(s)" in m for m in logs)

    passing = {"json_extraction.held_out.field_f1": 0.7}
    assert push(hub_server, folder, gates=passing, results=RESULTS, log=logs.append).commit_oid


# --------------------------------------------------------------------------- 8. validation


@pytest.mark.parametrize(
    "repo_id,needle",
    [
        ("", "empty"),
        ("a/b/c", "more than one '/'"),
        ("https://huggingface.co/org/name", "looks like a URL"),
        ("org/my model", "' '"),
        ("org/-name", "must not start or end"),
        ("org/na--me", "'--'"),
        ("/name", "empty organization"),
        ("org/name.git", ".git"),
    ],
)
def test_bad_repo_id_is_a_user_error_before_any_request(tiny, hub_server, hub_env, repo_id, needle):
    _, folder = tiny
    with pytest.raises(UserError) as exc_info:
        push(hub_server, folder, repo_id)
    assert needle in str(exc_info.value)
    assert "NAME" in str(exc_info.value) or "rename" in str(exc_info.value) or "suffix" in str(exc_info.value)
    assert hub_server.requests == []


def test_bad_folder_or_revision_is_a_user_error_before_any_request(tiny, hub_server, hub_env, tmp_path):
    _, folder = tiny
    with pytest.raises(UserError, match="does not exist"):
        push(hub_server, tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        push(hub_server, tmp_path / "empty")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        push(hub_server, tmp_path / "file.txt")
    with pytest.raises(UserError, match="not a valid branch name"):
        push(hub_server, folder, revision="../x")
    with pytest.raises(UserError, match="max_retries"):
        push(hub_server, folder, max_retries=0)
    assert hub_server.requests == []


def test_recipe_push_block_pushes_after_training_and_merge(hub_server, hub_env, monkeypatch, tmp_path,
                                                           tiny_model_dir):
    """`push:` in a recipe: train -> merge -> (eval) -> gates -> push, through the real client."""
    from qwenft.config import load_recipe
    from qwenft.pipeline import after_training
    from qwenft.trainer import train

    monkeypatch.setenv("HF_ENDPOINT", hub_server.endpoint)
    monkeypatch.setenv("HF_TOKEN", TEST_TOKEN)
    repo = Path(__file__).resolve().parents[1]
    recipe = load_recipe(repo / "recipes" / "smoke.yaml",
                         [f"output_dir={tmp_path}", "training.max_steps=1", "training.save_steps=100",
                          "eval.suites=[]", "eval.lm_eval_tasks=[]", "push.repo_id=testuser/smoke-merged"])
    run = train(recipe)
    after_training(run, recipe, merge=False, evaluate=False)
    files = hub_server.files("testuser/smoke-merged")
    assert {"config.json", "model.safetensors", "README.md", "qwenft_merge.json"} <= set(files)
    assert files["model.safetensors"] == (run / "merged" / "model.safetensors").read_bytes()
    for name, data in files.items():
        assert TEST_TOKEN.encode() not in data, name
    # gates that the (missing) evaluation cannot meet stop the push, naming the gate
    from qwenft.errors import UserError

    gated = load_recipe(repo / "recipes" / "smoke.yaml",
                        [f"output_dir={tmp_path}", "eval.suites=[]", "eval.lm_eval_tasks=[]",
                         "push.repo_id=testuser/gated", "eval.gates={json_extraction.unconstrained.all.field_f1: 0.5}"])
    with pytest.raises(UserError, match="field_f1"):
        after_training(run, gated, merge=False, evaluate=False)
    assert "testuser/gated" not in hub_server.repos
