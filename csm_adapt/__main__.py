from csm_adapt.cli import main

main()
