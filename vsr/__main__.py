from vsr.cli import main

main(prog_name="vsr")
