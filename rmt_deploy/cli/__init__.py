"""`rmt-deploy`: one subcommand per verb, each in its own module (analyze, compress, export,
build, bench, run, report, eval), with the arguments they share in `args` and `inputs`.

The commands only translate flags into calls of the verbs (`rmt_deploy.verbs`), the same
calls the pipeline's stages make; errors in the input exit with status 2, in one line."""

from .app import build_parser, main, one_line

__all__ = ["build_parser", "main", "one_line"]
