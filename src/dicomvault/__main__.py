from dicomvault.cli.main import main

main()
