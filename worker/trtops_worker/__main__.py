from trtops_worker.cli import main

raise SystemExit(main())
