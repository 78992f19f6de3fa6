from trainer.daemon.main import main

main()
