"""`python -m softmaxce ...` runs the command-line tool (same as the `softmaxce` command)."""

from softmaxce.cli import main

if __name__ == "__main__":
    main(prog_name="softmaxce")
