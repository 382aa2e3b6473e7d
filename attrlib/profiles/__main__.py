import sys

from attrlib.profiles import main

sys.exit(main())
