"""One module per `csm-adapt` subcommand, each exposing one click command."""
