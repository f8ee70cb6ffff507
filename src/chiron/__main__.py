from chiron.client.cli import main

main()
