"""`python -m services.cli`: the same as `mossctl`."""

from . import main

main()
