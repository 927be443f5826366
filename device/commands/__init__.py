"""The appliance's subcommands (serve, infer, eval, bench, doctor), one module each: ``add_arguments(parser, name)``
and ``run(args) -> int``. ``optimize`` lives in optimize/command.py, ``train`` and ``export`` in
models/train_commands.py; device/cli.py dispatches to all of them."""
