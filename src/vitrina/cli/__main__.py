"""``python -m vitrina.cli``: the same as the `vitrina` command."""
from vitrina.cli import main

if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
