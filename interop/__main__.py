from interop.cli import main

raise SystemExit(main())
