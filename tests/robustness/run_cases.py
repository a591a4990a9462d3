"""Run many `qwenft validate` cases in ONE process (torch/transformers imported once).

Reads a JSON list of argv lists on stdin; for each, calls qwenft.cli.main(argv) exactly as the
`qwenft` entry point does, capturing stdout/stderr, and writes one JSON list of results to stdout:
{"argv", "rc", "stdout", "stderr", "seconds"}. An exception that escapes main() is recorded with
its traceback (the test then fails on "Traceback"), as the real CLI would print it.
"""

import contextlib
import io
import json
import sys
import time
import traceback


def run_one(argv):
    from qwenft.cli import main

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
            "seconds": round(time.perf_counter() - t0, 3)}


def main():
    cases = json.load(sys.stdin)
    real_stdout = sys.stdout
    results = [run_one(argv) for argv in cases]
    real_stdout.write(json.dumps(results))
    real_stdout.flush()


if __name__ == "__main__":
    main()
