"""One module per ``bedside`` subcommand: ``add_arguments(parser, name)`` and ``run(args) -> int``."""
