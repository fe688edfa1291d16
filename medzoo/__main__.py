"""``python -m medzoo`` (and ``torchrun -m medzoo``) run the command line."""

from .cli import main

main()
