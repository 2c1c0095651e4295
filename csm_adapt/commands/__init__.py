"""One module per `csm-adapt` subcommand, each exposing one click command; `csm_adapt.cli` adds them.

Commands are the top of the tree: they may import every subpackage. Heavy imports (torch) happen
inside the command functions so that `csm-adapt --help` stays fast.
"""
