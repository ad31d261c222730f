import sys

from wgagent.cli import main

sys.exit(main())
