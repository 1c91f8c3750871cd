"""`python -m tlearn`: the tlearn command, for launchers that start Python modules."""

from .cli import main

main()
