"""``python -m beam_pipeline.report OUTPUT_DIR [--baseline PREVIOUS_OUTPUT]``."""
import sys

from beam_pipeline.report import main

sys.exit(main())
