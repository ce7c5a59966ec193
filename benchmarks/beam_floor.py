"""The fixed shape with nothing of Lantern's in it: what the local runner costs by itself.

    python benchmarks/beam_floor.py EXPORT.csv

``ReadFromText`` -> a ``Map`` that keys each line by its first 8 bytes ->
``CombinePerKey(sum)`` -> a count of the keys, on the same runner Lantern uses
(``beam_pipeline.runners.local_runner``). No parsing, no features, no output
files: the time any job of this shape needs on this machine, whatever its
steps do. ``benchmarks/perf.py`` runs it as the ``beam_floor`` scenario.
"""
from __future__ import annotations

import sys
from pathlib import Path

import apache_beam as beam
from apache_beam import coders
from apache_beam.options.pipeline_options import PipelineOptions

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from beam_pipeline.runners import local_runner


def main(argv: list[str]) -> None:
    path, beam_args = argv[0], argv[1:]
    options = PipelineOptions(beam_args)
    with beam.Pipeline(runner=local_runner(options), options=options) as p:
        _ = (
            p
            | "Read" >> beam.io.ReadFromText(path, coder=coders.BytesCoder(), skip_header_lines=1)
            | "Key" >> beam.Map(lambda line: (line[:8], 1))
            | "Combine" >> beam.CombinePerKey(sum)
            | "Members" >> beam.combiners.Count.Globally()
        )


if __name__ == "__main__":
    main(sys.argv[1:])
