import sys

from runtime.cli import run

from .generate import main

sys.exit(run(main))
