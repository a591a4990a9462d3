"""Entry point: `accelerate launch qwenft/train.py RECIPE [section.key=value ...]`."""

import os
import sys

if __name__ == "__main__":
    # Run as a script, this file's folder would shadow installed packages by module name.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]


def main(argv=None) -> int:
    from qwenft.cli import main as cli_main

    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
