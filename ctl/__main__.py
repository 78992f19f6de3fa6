from ctl.entry import main

main()
