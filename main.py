"""Flex Template entry point: the launcher runs this file with the template's parameters.

It is ``python -m beam_pipeline`` under the file name the launcher wants
(``FLEX_TEMPLATE_PYTHON_PY_FILE`` in the Dockerfile).
"""
import sys

from beam_pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main())
