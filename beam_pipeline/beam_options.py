"""Options the CLI hands to Beam: only the ones Beam's ``PipelineOptions`` knows, anything else is exit 2.

Beam drops an option it cannot parse with a warning, so ``--overwite`` would run a job that
ignores the flag its user meant. Every option the CLI does not take itself must be one of
the options of a ``PipelineOptions`` subclass (``StandardOptions``, ``GoogleCloudOptions``,
``DirectOptions``, ...); otherwise the run stops before anything happens, with one line
naming the option and the closest known one.
"""
from __future__ import annotations

import argparse
import difflib
import functools

from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

from lantern.errors import ConfigError


def _option_classes(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_option_classes(sub)]
    return found


@functools.cache
def beam_parser() -> argparse.ArgumentParser:
    """A parser of every option Beam's ``PipelineOptions`` subclasses declare, as
    ``PipelineOptions.get_all_options`` builds it."""
    parser = _BeamArgumentParser(allow_abbrev=False)
    seen: set[str] = set()
    for cls in _option_classes(PipelineOptions):
        name = f"{cls.__module__}.{cls.__qualname__}"
        if name not in seen:  # a class reached through two bases adds its options once
            seen.add(name)
            cls._add_argparse_args(parser)
    return parser


def known_options(parser: argparse.ArgumentParser) -> list[str]:
    return [option for option in parser._option_string_actions if option.startswith("--")]


def check_known(beam_args: list[str], own: argparse.ArgumentParser) -> None:
    """Raise ``ConfigError`` on the first of ``beam_args`` that is no Beam option.

    ``own`` is the CLI's parser: the closest option is looked for among its options and Beam's.
    """
    _, unknown = beam_parser().parse_known_args(beam_args)
    if not unknown:
        return
    arg = unknown[0]
    if not arg.startswith("-"):
        raise ConfigError(f"unexpected argument {arg!r} (options start with --; see --help)")
    option = arg.split("=", 1)[0]
    close = difflib.get_close_matches(option, known_options(own) + known_options(beam_parser()), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise ConfigError(f"unknown option {option}{hint}; see --help")
