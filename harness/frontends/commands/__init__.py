"""Subcommands of the command line, one module each; importing this package registers none of
them (so that start-up imports only the subcommand being run): `registry` registers them all."""
