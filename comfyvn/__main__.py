import sys

from comfyvn.cli import main

sys.exit(main())
