"""`python -m nucseg ...`: the same as the `nucseg` command."""
from nucseg.cli import run

run()
