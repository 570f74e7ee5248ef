"""Write the feature documentation: python -m caspar.features [docs/features.md]"""
import sys

from caspar.features import markdown

with open(sys.argv[1] if len(sys.argv) > 1 else "docs/features.md", "w") as handle:
    handle.write(markdown())
