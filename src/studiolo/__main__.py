from studiolo.cli.main import main

main()
