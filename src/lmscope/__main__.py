from lmscope.cli import main

main()
