import sys

from netcompress.cli import main

sys.exit(main())
