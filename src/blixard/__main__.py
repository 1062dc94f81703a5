"""`python -m blixard ...` — same as the `blixard` console script."""

from blixard.cli import main

main()
