"""``python -m ragline.cli``: the same as the ``ragline`` command."""

from ragline.cli.main import main

if __name__ == "__main__":  # not again in the processes vLLM spawns
    main()
