"""``python -m goodput.cli``: the `goodput` command."""

from goodput.cli.main import main

raise SystemExit(main())
