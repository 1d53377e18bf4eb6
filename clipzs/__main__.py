from clipzs.cli import main

main()
