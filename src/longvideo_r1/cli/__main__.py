"""``python -m longvideo_r1.cli``: the ``lvr1`` command without its entry point."""

from longvideo_r1.cli.main import main

raise SystemExit(main())
