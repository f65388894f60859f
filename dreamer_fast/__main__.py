"""``python -m dreamer_fast`` is the same as the ``dreamer-fast`` command."""

from dreamer_fast.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
