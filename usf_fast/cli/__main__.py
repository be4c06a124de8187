"""`python -m usf_fast.cli` (what torchrun launches): the `usf-fast` command."""
import sys

from . import main

sys.exit(main())
