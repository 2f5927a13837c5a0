import sys

from edetgraph.data.synthetic.command import main

sys.exit(main())
