"""``python -m laser_plugin`` is the ``laser`` command."""

from laser_plugin.cli.main import main

raise SystemExit(main())
