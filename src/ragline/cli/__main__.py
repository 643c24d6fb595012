"""``python -m ragline.cli``: the same as the ``ragline`` command."""

from ragline.cli.main import main

main()
