from clusterclr.cli import main

raise SystemExit(main())
