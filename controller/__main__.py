from controller.daemon import main

raise SystemExit(main())
