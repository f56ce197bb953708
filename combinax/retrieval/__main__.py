"""`python -m combinax.retrieval build|search ...`: a command, so its code lives on the command floor
(`combinax.cli.retrieval`)."""

if __name__ == "__main__":
  from combinax.cli.retrieval import main
  main()
