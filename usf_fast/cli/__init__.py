"""`usf-fast` command line: sample, compare, search, generate, show, info, presets.

One module per concern: `options` (flag values and their checks), `sample` (sample, compare),
`search` (search, generate), `info` (show, info, presets), `parser` (every flag, its help and
default); the torchrun plumbing lives with the search (`usf_fast.search.distributed`), the
pictures in `usf_fast.pictures` and `usf_fast.search.report`.
"""
from __future__ import annotations

import os
import sys

from .options import _one_line
from .parser import build_parser

__all__ = ["main", "build_parser"]


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"usf-fast {args.command}: interrupted (a search's log keeps its evaluations: --resume continues it)",
              file=sys.stderr)
        return 130
    except (ValueError, OSError) as e:   # bad input, and files: missing, a folder, read-only, ...
        print(f"usf-fast {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:   # anything else a user's input reached: still one line (the traceback on request)
        if os.environ.get("USF_FAST_TRACEBACK"):
            raise
        print(f"usf-fast {args.command}: error: {type(e).__name__}: {_one_line(e)} "
              "(USF_FAST_TRACEBACK=1 shows the traceback)", file=sys.stderr)
        return 2
