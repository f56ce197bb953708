"""`python -m combinax.pretrained [list | download NAME... | info NAME... | run NAME [FLAGS]]`: a command, so its
code lives on the command floor (`combinax.cli.pretrained`)."""

if __name__ == "__main__":
  from combinax.cli.pretrained import main
  main()
