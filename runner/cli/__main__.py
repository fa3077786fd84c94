"""``python -m runner.cli``: the ``fsm-runner`` command."""

from runner.cli.main import main

main()
