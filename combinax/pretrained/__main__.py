"""`python -m combinax.pretrained [list | download NAME... | info NAME...]`."""

import sys

from combinax.pretrained.registry import main

sys.exit(main())
