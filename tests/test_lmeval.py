"""qwenft.lmeval and the shipped lm-eval tasks (eval/tasks)."""

import importlib.util
import json
import time

import pytest
import torch

from qwenft.errors import UserError
from qwenft.lmeval import check_tasks, run_lm_eval


@pytest.fixture(scope="module")
def task_utils(repo_root):
    spec = importlib.util.spec_from_file_location("qwenft_task_utils", repo_root / "eval/tasks/utils.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_shipped_tasks_are_found_locally_and_fast():
    t0 = time.time()
    info = check_tasks(["qwenft_json_extraction", "qwenft_arith", "qwenft_suite"])
    assert info == {"local_only": True, "hub_datasets": []}
    assert time.time() - t0 < 10


def test_unknown_task_gets_did_you_mean():
    with pytest.raises(UserError, match="Did you mean 'qwenft_json_extraction'"):
        check_tasks(["qwenft_json_extration"])  # first call may build lm-eval's index (cached)
    t0 = time.time()
    with pytest.raises(UserError, match="Unknown lm-eval task 'gsm8kk'.*Did you mean 'gsm8k'"):
        check_tasks(["gsm8kk"])
    assert time.time() - t0 < 10


def test_hub_task_offline_fails_fast_and_before_the_model(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.time()
    with pytest.raises(UserError, match=r"gsm8k.*Hugging Face Hub \(openai/gsm8k\).*unreachable"):
        # model=None: the check must fail before anything touches the model
        run_lm_eval(None, None, ["qwenft_arith", "gsm8k"])
    assert time.time() - t0 < 10
    with pytest.raises(UserError, match="EleutherAI/arithmetic"):  # json builder on hf:// files
        check_tasks(["arithmetic_2da"])


def test_task_data_loads_from_any_working_directory(repo_root, tmp_path, monkeypatch):
    from lm_eval.tasks import TaskManager

    monkeypatch.chdir(tmp_path)
    tm = TaskManager(include_path=str(repo_root / "eval/tasks"), include_defaults=False)
    tasks = tm.load(["qwenft_json_extraction", "qwenft_arith"])["tasks"]
    by_name = {getattr(k, "task_name", k): v for k, v in tasks.items()}
    docs = list(by_name["qwenft_json_extraction"].test_docs())
    assert len(docs) == 80 and docs[0]["id"] == "ext-in-001-person"
    # Nested fields survive intact (as JSON text), not merged into one Arrow struct.
    assert json.loads(docs[0]["schema_json"])["required"] == ["name", "age", "email"]
    assert set(json.loads(docs[0]["gold_json"])) == {"name", "age", "email", "city", "is_student",
                                                      "languages"}
    assert len(list(by_name["qwenft_arith"].test_docs())) == 60


def test_arith_data_file_matches_its_generator(task_utils, repo_root):
    rows = [json.loads(x) for x in (repo_root / "eval/tasks/qwenft_arith.jsonl").read_text().splitlines()]
    assert rows == task_utils.make_arith_rows()
    assert all(str(eval(r["question"].split("What is ")[1].split("?")[0])) == r["answer"] for r in rows)
    assert task_utils.process_results_arith(rows[0], [f" {rows[0]['answer']}"])["exact_match"] == 1.0
    assert task_utils.process_results_arith(rows[0], ["The answer is 12345."])["exact_match"] == 0.0


def test_task_scoring_is_qwenft_scoring(task_utils, repo_root):
    from qwenft.jsonchecks import aggregate, score_sample

    docs = task_utils.suite_docs("json_extraction")[:3]
    gold0 = json.loads(docs[0]["gold_json"])
    outputs = [json.dumps(gold0), "```json\n" + json.dumps(dict(gold0, age=1)) + "\n```", "no json \ufffd"]
    ours, theirs = [], []
    for doc, text in zip(docs, outputs):
        s = score_sample(text, schema=json.loads(doc["schema_json"]), gold=json.loads(doc["gold_json"]),
                         has_gold=True, stopped=True, n_tokens=1)
        r = task_utils.process_results_json(doc, [text])
        for k in ("valid_strict", "valid_lenient", "schema_valid", "exact_match"):
            assert r[k] == float(bool(s[k])), k
        ours.append(s)
        theirs.append(r)
    agg = aggregate(ours)
    assert task_utils.micro_f1([r["field_f1"] for r in theirs]) == pytest.approx(agg["field_f1"])
    assert task_utils.micro_precision([r["field_precision"] for r in theirs]) == pytest.approx(
        agg["field_precision"])


def test_lm_eval_prompts_follow_the_system_policy(tiny_model_dir):
    from qwenft.generate import load_model_for_eval, render_prompts
    from qwenft.lmeval import _policy_lm_class

    lm = load_model_for_eval("tiny-random")
    chat = [{"role": "user", "content": "Give JSON."}]
    for policy in ("default", "none", "You are a JSON machine."):
        hflm = _policy_lm_class()(pretrained=lm.model, tokenizer=lm.tokenizer, batch_size=1,
                                  max_length=256, device="cpu", system_policy=policy)
        assert hflm.apply_chat_template(chat) == render_prompts(lm.tokenizer, [chat], policy)[0]
    # A row's own system message wins, as in qwenft eval.
    own = [{"role": "system", "content": "Row system."}] + chat
    assert "Row system." in hflm.apply_chat_template(own)
    assert "JSON machine" not in hflm.apply_chat_template(own)


def _strip_specials(text, tok):
    for t in tok.all_special_tokens:
        text = text.replace(t, "")
    return text


def _parity(lm, tmp_path, *, limit, max_new_tokens, batch_size):
    from qwenft.evaluate_json import run_json_suite
    from qwenft.suites import load_suite, resolve_suite

    ours = run_json_suite(lm.model, lm.tokenizer, load_suite(resolve_suite("json_extraction")),
                          modes=["unconstrained"], max_new_tokens=max_new_tokens,
                          batch_size=batch_size, limit=limit, progress=False)["unconstrained"]
    theirs = run_lm_eval(lm.model, lm.tokenizer, ["qwenft_json_extraction"], limit=limit,
                         batch_size=batch_size, out_dir=tmp_path / "lm", model_name="parity",
                         max_gen_toks=max_new_tokens)
    samples = [json.loads(x) for x in open(theirs["files"]["samples"]["qwenft_json_extraction"])]
    samples.sort(key=lambda s: s["doc_id"])
    for s, q in zip(samples, ours["samples"]):
        assert s["doc"]["id"] == q["id"]
        assert s["filtered_resps"][0] == _strip_specials(q["output"], lm.tokenizer)
    a, m = ours["metrics"]["all"], theirs["metrics"]["qwenft_json_extraction"]
    pairs = {"valid_strict_rate": "valid_strict", "valid_lenient_rate": "valid_lenient",
             "schema_valid_rate": "schema_valid", "exact_match_rate": "exact_match",
             "field_f1": "field_f1", "field_precision": "field_precision", "field_recall": "field_recall"}
    for ok, tk in pairs.items():
        assert m[tk] == pytest.approx(a[ok]), (ok, a[ok], m[tk])
    # lm-eval's own files: results (with our system policy recorded) and samples.
    # lm-eval got the model as loaded: never resized to the tokenizer's length (151665).
    assert lm.model.get_input_embeddings().weight.shape[0] == lm.model.config.vocab_size == 151936
    raw = json.loads(open(theirs["files"]["results"]).read())
    assert raw["config"]["qwenft_system_policy"] == "default"
    assert raw["configs"]["qwenft_json_extraction"]["generation_kwargs"]["until"] == ["<|im_end|>"]
    return ours, theirs


def test_lm_eval_task_parity_tiny(tmp_path, tiny_model_dir):
    """Same greedy text and same numbers as `qwenft eval` (tiny model: garbage, but varied)."""
    from qwenft.generate import load_model_for_eval

    lm = load_model_for_eval("tiny-random")
    torch.manual_seed(1)
    with torch.no_grad():
        for p in lm.model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.35)
    _parity(lm, tmp_path, limit=4, max_new_tokens=12, batch_size=4)


@pytest.mark.slow
def test_lm_eval_task_parity_stand_in(tmp_path, stand_in_dir):
    """The stand-in writes real JSON, so the compared numbers are not all zero."""
    from qwenft.generate import load_model_for_eval

    lm = load_model_for_eval(str(stand_in_dir))
    ours, _ = _parity(lm, tmp_path, limit=4, max_new_tokens=64, batch_size=4)
    assert ours["metrics"]["all"]["valid_lenient_rate"] > 0
