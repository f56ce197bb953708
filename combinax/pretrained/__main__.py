"""`python -m combinax.pretrained [list | download NAME... | info NAME... | run NAME [FLAGS]]`."""

import sys

from combinax.pretrained.registry import main

if __name__ == "__main__":
  sys.exit(main())
