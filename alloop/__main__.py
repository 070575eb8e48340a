"""``python -m alloop`` runs the command line."""

from alloop.cli import main

main()
