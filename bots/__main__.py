import sys

from bots.bot import main

sys.exit(main())
