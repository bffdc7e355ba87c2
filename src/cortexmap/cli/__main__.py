"""``python -m cortexmap.cli``."""

from cortexmap.cli import main

main()
