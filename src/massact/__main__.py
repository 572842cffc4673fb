from massact.cli import main

main()
