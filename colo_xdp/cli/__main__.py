from colo_xdp.cli.commands import main

main()
