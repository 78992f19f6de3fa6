from trainer.demo.run import main

main()
