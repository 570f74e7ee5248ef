"""Write the feature documentation: python -m caspar.data.features [docs/features.md]"""
import sys

from caspar.data.features import markdown

with open(sys.argv[1] if len(sys.argv) > 1 else "docs/features.md", "w") as handle:
    handle.write(markdown())
