"""Bad recipes and bad data through the real `qwenft validate` CLI.

Every case in tests/robustness/bad/ (a recipe `*.yaml`, most extending the valid
parents/base.yaml and pointing at a bad file under data/) states what its error must
name, in comment lines at its end:

    # where: <regex>   the file / row (file:line:) / key the message must name
    # hint: <regex>    the fix the message must suggest
    # args: [...]      overrides passed after the recipe (JSON list)

Each case must exit 2 with ONE `qwenft error:` paragraph on stderr matching every
where/hint, no traceback, before any weights load, in a few seconds.

Cost: each CLI process imports torch/transformers (~5 s on 2 cores), so all cases run
in ONE helper process (run_cases.py calls qwenft.cli.main(argv) per case, exactly as
the entry point does); a handful also run as true `python -m qwenft.cli validate`
subprocesses.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
BAD = HERE / "bad"
REPO = HERE.parents[1]
BASE_RECIPE = BAD / "parents" / "base.yaml"

# Cases that also run as real CLI subprocesses (one per kind of failure).
SUBPROCESS_CASES = ["unknown_top_key", "extends_cycle", "recipe_is_a_directory", "bad_json_line",
                    "override_wrong_type", "mask_audit_all_empty"]
# Seen on 2 idle cores: < 0.1 s per recipe/data case, ~1-2 s for the mask-audit cases (they
# load the tokenizer), ~6 s per subprocess (mostly the torch/transformers import). The limits
# leave room for a machine shared with other test runs; "no weights loaded" is checked exactly
# (the helper watches every model-loading entry point).
IN_PROCESS_LIMIT_S = 30.0
SUBPROCESS_LIMIT_S = 90.0


@dataclass(frozen=True)
class Case:
    name: str
    recipe: Path
    args: tuple[str, ...]
    where: tuple[str, ...]
    hint: tuple[str, ...]

    @property
    def argv(self) -> list[str]:
        return ["validate", str(self.recipe), *self.args]


def _meta(raw: bytes) -> dict:
    meta = {"where": [], "hint": [], "args": []}
    for line in raw.decode("latin-1").splitlines():
        m = re.match(r"#\s*(where|hint|args):\s?(.*)$", line)
        if m:
            key, val = m.groups()
            if key == "args":
                meta["args"] = json.loads(val)
            else:
                meta[key].append(val)
    return meta


def collect_cases() -> list[Case]:
    cases = []
    for p in sorted(BAD.iterdir()):
        if p.name in ("data", "parents"):
            continue
        meta = _meta((p / "expect.txt").read_bytes() if p.is_dir() else p.read_bytes())
        cases.append(Case(p.stem, p, tuple(meta["args"]), tuple(meta["where"]), tuple(meta["hint"])))
    cases.append(Case("missing_recipe_file", BAD / "no_such_recipe.yaml", (),
                      (r"no_such_recipe\.yaml",), (r"does not exist\. Check the path",)))
    return cases


CASES = collect_cases()
BY_NAME = {c.name: c for c in CASES}


def _env() -> dict:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", HF_HUB_DISABLE_TELEMETRY="1",
               PYTHONUNBUFFERED="1")
    return env


def _run_helper(argvs: list[list[str]]) -> list[dict]:
    proc = subprocess.run([sys.executable, str(HERE / "run_cases.py")], input=json.dumps(argvs),
                          capture_output=True, text=True, cwd=REPO, env=_env(), timeout=600)
    assert proc.returncode == 0, f"helper crashed:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout)


def _run_cli(case: Case) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "qwenft.cli", *case.argv], capture_output=True,
                          text=True, cwd=REPO, env=_env(), timeout=300)
    return {"argv": case.argv, "rc": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr,
            "seconds": round(time.perf_counter() - t0, 3)}


@pytest.fixture(scope="module")
def results(tiny_model_dir):
    """Run the whole corpus once: every case in the helper, a few also as real subprocesses."""
    argvs = [c.argv for c in CASES] + [["validate", str(BASE_RECIPE)]]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=3) as pool:
        helper = pool.submit(_run_helper, argvs)
        # The real subprocesses share two workers beside the helper.
        with ThreadPoolExecutor(max_workers=2) as subpool:
            real = dict(zip(SUBPROCESS_CASES, subpool.map(lambda n: _run_cli(BY_NAME[n]), SUBPROCESS_CASES)))
        in_process = helper.result()
    wall = time.perf_counter() - t0
    return {"in_process": {c.name: r for c, r in zip(CASES, in_process)},
            "base": in_process[-1], "subprocess": real, "wall_s": round(wall, 1)}


def _check(case: Case, r: dict) -> None:
    out = r["stdout"] + r["stderr"]
    assert "Traceback" not in out, f"{case.name}: traceback in the output:\n{out[-3000:]}"
    assert "Loading weights" not in out, f"{case.name}: weights were loaded before the failure"
    assert r["rc"] == 2, f"{case.name}: exit code {r['rc']}, expected 2\n{out[-3000:]}"
    errors = [ln for ln in r["stderr"].splitlines() if ln.startswith("qwenft error")]
    assert len(errors) == 1, f"{case.name}: expected one 'qwenft error' paragraph, got:\n{r['stderr']}"
    msg = errors[0]
    assert case.where and case.hint, f"{case.name}: the case must declare # where: and # hint:"
    for pat in case.where:
        assert re.search(pat, msg), f"{case.name}: message does not name {pat!r}:\n{msg}"
    for pat in case.hint:
        assert re.search(pat, msg), f"{case.name}: message gives no hint {pat!r}:\n{msg}"


def test_corpus_is_big_and_distinct():
    assert len(CASES) >= 30
    assert len({c.name for c in CASES}) == len(CASES)
    data_files = [p for p in (BAD / "data").iterdir()]
    assert len(data_files) >= 20


def test_base_recipe_of_the_corpus_is_valid(results):
    """The defects are the cases' own: the recipe they all extend validates cleanly."""
    r = results["base"]
    assert r["rc"] == 0, r["stderr"][-3000:]
    assert "recipe:" in r["stdout"] and "- OK" in r["stdout"]
    assert r["model_loads"] == []  # validate never loads weights, even when all is well


@pytest.mark.parametrize("name", [c.name for c in CASES])
def test_bad_input_in_one_process(results, name):
    r = results["in_process"][name]
    _check(BY_NAME[name], r)
    assert r["model_loads"] == [], f"{name}: a model was loaded: {r['model_loads']}"
    assert r["seconds"] < IN_PROCESS_LIMIT_S, f"{name} took {r['seconds']} s"


@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_bad_input_real_cli_subprocess(results, name):
    r = results["subprocess"][name]
    _check(BY_NAME[name], r)
    assert r["seconds"] < SUBPROCESS_LIMIT_S, f"{name} took {r['seconds']} s"
    # The same message as the in-process run of the same case.
    err = [ln for ln in r["stderr"].splitlines() if ln.startswith("qwenft error")]
    err2 = [ln for ln in results["in_process"][name]["stderr"].splitlines() if ln.startswith("qwenft error")]
    assert err == err2


def test_corpus_summary(results):
    ip, sp = results["in_process"], results["subprocess"]
    summary = {
        "bad_input_cases": len(CASES),
        "in_process_exit_2": sum(1 for r in ip.values() if r["rc"] == 2),
        "subprocess_cases": len(sp),
        "subprocess_exit_2": sum(1 for r in sp.values() if r["rc"] == 2),
        "tracebacks": sum("Traceback" in r["stdout"] + r["stderr"] for r in [*ip.values(), *sp.values()]),
        "slowest_in_process": max(((r["seconds"], n) for n, r in ip.items())),
        "slowest_subprocess_s": max(r["seconds"] for r in sp.values()),
        "wall_s": results["wall_s"],
    }
    print("\nBAD-INPUT CORPUS SUMMARY " + json.dumps(summary))
    assert summary["in_process_exit_2"] == len(CASES)
    assert summary["subprocess_exit_2"] == len(sp)
    assert summary["tracebacks"] == 0
