from __future__ import annotations

import sys

from gateway.serve.cli import main

sys.exit(main())
