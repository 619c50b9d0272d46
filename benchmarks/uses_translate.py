"""Every method of `translate` (edges -> digits) at one budget: benchmarks/uses_superres.py's table and pictures.

    flock /work/wt/cpu.lock nice -n 5 .venv/bin/python benchmarks/uses_translate.py --budget standard \
        --out benchmarks/results/uses-translate
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from uses_superres import main  # noqa: E402

if __name__ == "__main__":
    main("translate")
