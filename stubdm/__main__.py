import sys

from stubdm.main import main

sys.exit(main())
