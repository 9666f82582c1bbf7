"""Benchmarks: ``python scripts/bench.py {optimizers,meta-train,bound,xla-flags} [options]``. Results go in BENCHMARKS.md."""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, add_help=False)
    parser.add_argument("which", choices=["optimizers", "meta-train", "bound", "xla-flags"])
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        parser.print_help()
        return 0
    args, rest = parser.parse_known_args()
    if args.which == "optimizers":
        from bench_optimizers import main as run
    elif args.which == "bound":
        from bench_bound import main as run
    elif args.which == "xla-flags":
        from bench_xla_flags import main as run
    else:
        from bench_meta_train import main as run
    return run(rest)


if __name__ == "__main__":
    sys.exit(main())
