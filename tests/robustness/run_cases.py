"""Run many `qwenft validate` cases in ONE process (torch/transformers imported once).

Reads a JSON list of argv lists on stdin; for each, calls qwenft.cli.main(argv) exactly as the
`qwenft` entry point does, capturing stdout/stderr, and writes one JSON list of results to stdout:
{"argv", "rc", "stdout", "stderr", "seconds"}. An exception that escapes main() is recorded with
its traceback (the test then fails on "Traceback"), as the real CLI would print it.

Model loading is watched: qwenft's load_base_model and transformers' AutoModel*.from_pretrained
are wrapped so that a case which loads weights is recorded ("model_loads" > 0).
"""

import contextlib
import io
import json
import sys
import time
import traceback


MODEL_LOADS = []


def _watch_model_loading():
    import transformers

    import qwenft.model
    import qwenft.trainer  # noqa: F401  (trainer imports load_base_model from qwenft.model at call time)

    def wrap(owner, name):
        orig = getattr(owner, name)

        def watched(*a, **kw):
            MODEL_LOADS.append(f"{getattr(owner, '__name__', owner)}.{name}")
            return orig(*a, **kw)

        setattr(owner, name, watched)

    wrap(qwenft.model, "load_base_model")
    for cls in ("AutoModel", "AutoModelForCausalLM"):
        auto = getattr(transformers, cls)
        orig = auto.from_pretrained.__func__

        def watched(klass, *a, _orig=orig, _cls=cls, **kw):
            MODEL_LOADS.append(f"{_cls}.from_pretrained")
            return _orig(klass, *a, **kw)

        auto.from_pretrained = classmethod(watched)


def run_one(argv):
    from qwenft.cli import main

    MODEL_LOADS.clear()
    out, err = io.StringIO(), io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse
            rc = e.code if isinstance(e.code, int) else 1
        except BaseException:  # noqa: BLE001 - recorded, the test fails on it
            traceback.print_exc(file=err)
            rc = 1
    return {"argv": argv, "rc": rc, "stdout": out.getvalue(), "stderr": err.getvalue(),
            "seconds": round(time.perf_counter() - t0, 3), "model_loads": list(MODEL_LOADS)}


def main():
    cases = json.load(sys.stdin)
    # Import what `validate` imports first, so each case's time is its own work.
    import qwenft.cli  # noqa: F401
    import qwenft.trainer  # noqa: F401

    _watch_model_loading()
    real_stdout = sys.stdout
    results = [run_one(argv) for argv in cases]
    real_stdout.write(json.dumps(results))
    real_stdout.flush()


if __name__ == "__main__":
    main()
