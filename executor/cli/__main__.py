"""``python -m qledger.cli``: the ``qledger`` command."""

from qledger.cli import main

main()
