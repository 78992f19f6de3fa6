from ctl.cli import main

main()
