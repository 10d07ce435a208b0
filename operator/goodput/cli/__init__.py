"""The `goodput` command line (console script ``goodput = goodput.cli:main``; ``python -m goodput.cli``).

One module per command group, each adding its subcommands to the parser that `main` builds:

    args       argument types and output helpers every command shares (number_arg, emit, ...)
    capacity   predict, plan, validate, catalog
    operator   operator, crd
    observe    observe (Prometheus)
    explain    explain (one InferenceDeployment, read from the cluster)
    simulate   simulate (trace replay)
    render     render (the objects the operator would apply, without a cluster)
    demo       demo (the closed loop on a local cluster; the work is goodput.demo.run)
    main       the parser and `main`

Command modules import ``args``, never ``main``; nothing outside the package imports it, so
the CLI has no import cycle.
"""

from goodput.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
