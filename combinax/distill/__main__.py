"""`python -m combinax.distill topk ...`: a command, so its code lives on the command floor (`combinax.cli.distill`)."""

if __name__ == "__main__":
  from combinax.cli.distill import main
  main()
