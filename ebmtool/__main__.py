from ebmtool.cli import main

main()
