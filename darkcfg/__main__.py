"""``python -m darkcfg`` = the ``darkcfg`` command."""

from .cli import main

raise SystemExit(main())
