from moonhowl.cli import main

raise SystemExit(main())
