"""mulo command line: ``python src/main.py {meta-train,meta-test,sweep,coord-check,report} --config FILE ...``."""

import sys

from mulo.app.cli import main

if __name__ == "__main__":
    sys.exit(main())
